"""What happens in this process once a state change committed: watchers hear of it, and
running jobs told to stop get their cancel."""
from __future__ import annotations

from orchestrator.sessions import Sessions
from orchestrator.store import Changes
from orchestrator.updates import Hub, JobUpdate, RunUpdate


class Effects:
    def __init__(self, hub: Hub, sessions: Sessions) -> None:
        self.hub = hub
        self.sessions = sessions

    def apply(self, changes: Changes) -> None:
        for run_id, job_id, key, state, message in changes.jobs:
            self.hub.publish(JobUpdate(run_id, job_id, key, state, message))
        for job_id in changes.cancel:
            session = self.sessions.get(job_id)
            if session is not None:
                session.request_cancel(changes.cancel_reason or "cancelled")
        if changes.run_finished is not None:
            self.hub.publish(RunUpdate(*changes.run_finished))
