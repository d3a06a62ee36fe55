"""``fleetctl``: the operator's command line."""
