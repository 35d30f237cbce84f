"""The operator CLI against the orchestrator's admin API."""
