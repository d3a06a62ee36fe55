"""What the fleet manager does, whoever asks: cost accounting, approvals, agent controls, the sweep,
the Slack outbox, reports, publishing commands to agents, handing work to ``fleet-actions``."""
