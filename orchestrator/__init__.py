"""The orchestrator: runs, jobs, VM backends, the Runner gRPC server, logs, the reaper."""
