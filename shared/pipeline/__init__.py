"""The ways in from Pub/Sub: decoding a push, the event handlers, scheduler ticks, the fleet-actions worker."""
