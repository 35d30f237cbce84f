"""The jobs this host is running right now, as the Runner service and the executor share them.

A `JobSession` lives from the lease to the end of the job. The runner's token is checked
against it (and, for GetJob, against the database); when the session closes the token is dead.
It also holds the job's log quota: the bytes a job may log and how far ahead of the stored
sequence its chunks may arrive. The first chunk past either closes the job's log for good.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from common.errors import SolsticeError
from common.forge.credentials import CheckoutCredential
from common.masking import SecretMasker
from common.messages import JobState, Repo


@dataclass(frozen=True)
class LogQuota:
    """What one job attempt may log: `max_bytes` in all, and chunks at most `window` sequence
    numbers past the last one stored without a gap (an honest runner resends in order, so
    only a hostile one leaves gaps that wide)."""

    max_bytes: int
    window: int


class LogQuotaExceeded(SolsticeError):
    """The job's log went past its quota; nothing more of it is stored. `first` on the
    chunk that closed the log (the one call that writes the closing line)."""

    def __init__(self, message: str, *, hint: str, first: bool) -> None:
        super().__init__(message, hint=hint)
        self.first = first


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
    # The credential the runner clones with (orchestrator/checkout_credentials.py), if any.
    checkout: CheckoutCredential | None = None
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
    log_bytes: int = 0
    # Why the job's log is closed (its quota was hit); empty while it is open.
    log_closed: str = ""
    logs_progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Artifact bytes stored or arriving for this attempt, against the per-job cap
    # (orchestrator/artifacts.py).
    artifact_bytes: int = 0
    # The job span's W3C trace context, handed to the runner (`common.tracing`).
    traceparent: str | None = None
    # When each running step was reported started (Unix ns), for its span.
    step_started_ns: dict[int, int] = field(default_factory=dict)
    started_unix_ns: int | None = None  # when the runner called in, for the boot span
    # Why an upload went past an artifact cap (empty: none did): the job fails whatever the
    # runner reports (rpc.ReportResult).
    artifact_refusal: str = ""
    # Seconds the machine is held after the result (0: not held), decided by the executor
    # once the result is in; the ReportResult ack tells the runner.
    hold: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def mark_started(self) -> None:
        self.started_at = time.monotonic()
        self.started_unix_ns = time.time_ns()
        self.touch()
        self.started.set()

    def accept_chunk(self, seq: int, size: int, quota: LogQuota) -> bool:
        """Whether chunk `seq` of `size` bytes is new (False for a resent duplicate).

        `LogQuotaExceeded` when the log is closed or this chunk goes past `quota`; the first
        such chunk closes the log (see `log_closed`)."""
        was_open = not self.log_closed
        if was_open:
            if seq > self.contiguous + quota.window:
                self.log_closed = (f"log chunk {seq} arrived more than {quota.window} chunks "
                                   f"after the last one stored without a gap ({self.contiguous})")
            elif self.log_bytes + size > quota.max_bytes and not self._duplicate(seq):
                self.log_closed = f"the job's log exceeded its quota of {quota.max_bytes} bytes"
        if self.log_closed:
            raise LogQuotaExceeded(
                f"{self.log_closed}; nothing more of this job's log is stored",
                hint="the limits are the orchestrator's log_quota_bytes and log_reorder_window",
                first=was_open)
        if self._duplicate(seq):
            return False
        self.log_bytes += size
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.contiguous + 1 in self.ahead:
                self.contiguous += 1
                self.ahead.discard(self.contiguous)
        else:
            self.ahead.add(seq)
        return True

    def _duplicate(self, seq: int) -> bool:
        return seq <= self.contiguous or seq in self.ahead

    @property
    def next_free_seq(self) -> int:
        """A sequence number above every chunk accepted (where a closing line goes)."""
        return max([self.contiguous, *self.ahead]) + 1

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
