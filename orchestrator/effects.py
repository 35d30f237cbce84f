"""What happens in this process once a state change committed: watchers hear of it, and
running jobs told to stop get their cancel."""
from __future__ import annotations

from collections.abc import Callable

from orchestrator.sessions import Sessions
from orchestrator.store import Changes
from orchestrator.updates import Hub, JobUpdate, RunUpdate


class Effects:
    def __init__(self, hub: Hub, sessions: Sessions) -> None:
        self.hub = hub
        self.sessions = sessions
        # Set by the service to the outbox relay's wake-up: rows this process committed are
        # relayed at once instead of after the NOTIFY round trip (which other hosts rely on).
        self.outbox_written: Callable[[], None] = lambda: None

    def apply(self, changes: Changes) -> None:
        self.outbox_written()
        for run_id, job_id, key, state, message in changes.jobs:
            self.hub.publish(JobUpdate(run_id, job_id, key, state, message))
        for job_id in changes.cancel:
            session = self.sessions.get(job_id)
            if session is not None:
                session.request_cancel(changes.cancel_reason or "cancelled")
        if changes.run_finished is not None:
            self.hub.publish(RunUpdate(*changes.run_finished))
