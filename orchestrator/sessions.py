"""The jobs this host is running right now, as the Runner service and the executor share them.

A `JobSession` lives from the lease to the end of the job. The runner's token is checked
against it (and, for GetJob, against the database); when the session closes the token is dead.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from common.masking import SecretMasker
from common.messages import JobState, Repo


@dataclass
class JobSession:
    job_id: uuid.UUID
    run_id: uuid.UUID
    key: str
    attempt: int
    token_hash: bytes
    spec: dict[str, Any]
    repo: Repo
    commit_sha: str
    ref: str
    secrets: dict[str, str]
    preloaded: bool
    masker: SecretMasker
    started: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)
    result: asyncio.Future[tuple[JobState, str]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str = ""
    cancel_at: float = 0.0
    # Log sequence bookkeeping: every seq <= `contiguous` was accepted, plus those in `ahead`.
    contiguous: int = 0
    ahead: set[int] = field(default_factory=set)
    logs_progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Artifact bytes stored or arriving for this attempt, against the per-job cap
    # (orchestrator/artifacts.py).
    artifact_bytes: int = 0

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def mark_started(self) -> None:
        self.started_at = time.monotonic()
        self.touch()
        self.started.set()

    def accept_seq(self, seq: int) -> bool:
        """Whether chunk `seq` is new (False for a resent duplicate)."""
        if seq <= self.contiguous or seq in self.ahead:
            return False
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.contiguous + 1 in self.ahead:
                self.contiguous += 1
                self.ahead.discard(self.contiguous)
        else:
            self.ahead.add(seq)
        return True

    def request_cancel(self, reason: str) -> None:
        if not self.cancel.is_set():
            self.cancel_reason = reason
            self.cancel_at = time.monotonic()
            self.cancel.set()

    def set_result(self, state: JobState, message: str) -> None:
        if not self.result.done():
            self.result.set_result((state, message))


class Sessions:
    """Running jobs of this host, by job id and by token hash."""

    def __init__(self) -> None:
        self._by_job: dict[uuid.UUID, JobSession] = {}
        self._by_token: dict[bytes, JobSession] = {}

    def add(self, session: JobSession) -> None:
        self._by_job[session.job_id] = session
        self._by_token[session.token_hash] = session

    def remove(self, session: JobSession) -> None:
        self._by_job.pop(session.job_id, None)
        self._by_token.pop(session.token_hash, None)

    def by_token(self, token_hash: bytes) -> JobSession | None:
        return self._by_token.get(token_hash)

    def get(self, job_id: uuid.UUID) -> JobSession | None:
        return self._by_job.get(job_id)

    def __len__(self) -> int:
        return len(self._by_job)
