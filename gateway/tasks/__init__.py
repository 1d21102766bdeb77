"""Background work per event: the channels' tasks (RQ jobs and signed webhooks)."""
