"""Platform adapters: settings and secrets, structured logs, the topology manifest, the event schemas."""
