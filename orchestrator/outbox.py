"""The outbox relay: publishes what transactions wrote to `outbox`, then marks it published.

Woken by `kick()` (the host's LISTEN on the outbox channel calls it: the NOTIFY is sent in the
same transaction as the rows, so it arrives at commit) and by a slow sweep as a safety net.
Rows are claimed with FOR UPDATE SKIP LOCKED, so several hosts relay one database without
publishing a row twice at once; a crash between publish and mark publishes it again, which
consumers absorb (job requests are idempotent by lease, events carry per-job sequence numbers).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from opentelemetry.trace import SpanKind

from common.broker import Broker
from common.messages import JobEvent, JobRequest
from common.observability import tracer
from common.retry import Backoff, retry_async
from common.supervise import Supervisor, wait_event
from common.tracing import context_from, within_run
from orchestrator.db import TRANSIENT_ERRORS, Database
from orchestrator.grants import GrantSigner, grant_link
from orchestrator.intake import WORKFLOW_JOB_KEY

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

BATCH = 200
SWEEP_SECONDS = 5.0
# Published rows are kept this long for inspection, then deleted by the sweep.
KEEP_PUBLISHED = timedelta(hours=1)
TRANSIENT = TRANSIENT_ERRORS


class OutboxRelay:
    def __init__(self, db: Database, broker: Broker) -> None:
        self.db = db
        self.broker = broker
        # Base of the web log pages; events get `log_url` from it (set once pages are served),
        # with a grant to the run from `grants` when links are signed.
        self.log_url_base = ""
        self.grants: GrantSigner | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, supervisor: Supervisor) -> None:
        """Relay under `supervisor` until `close()`, starting with what is there now."""
        self._wake.set()
        self._task = supervisor.spawn("outbox-relay", self.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Relay whenever kicked, and sweep every SWEEP_SECONDS, until cancelled."""
        while True:
            if not await wait_event(self._wake, SWEEP_SECONDS):
                await self._prune()
            self._wake.clear()
            try:
                while await retry_async(self.relay_once, retry_on=TRANSIENT,
                                        backoff=Backoff(initial=0.1, maximum=5),
                                        describe="relaying the outbox") == BATCH:
                    pass
            except Exception:
                # A broker fault: the rows stay unpublished and the next wake retries them.
                log.exception("outbox relay failed; retrying shortly")
                await self._pause_and_retry()

    async def _pause_and_retry(self) -> None:
        await asyncio.sleep(1)
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish up to BATCH unpublished rows in id order; return how many."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "SELECT o.id, o.kind, o.payload, o.trace_context, r.trace_context AS run_trace"
                " FROM outbox o LEFT JOIN runs r ON r.id = (o.payload->>'run_id')::uuid"
                " WHERE o.published_at IS NULL"
                " ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED", BATCH)
            for row in rows:
                # Published inside the run's trace (common/tracing.py).
                parent = context_from(within_run(row["trace_context"], row["run_trace"]))
                with _tracer.start_as_current_span(f"outbox.publish {row['kind']}", context=parent,
                                                   kind=SpanKind.PRODUCER):
                    if row["kind"] == "job_request":
                        await self.broker.publish_job(JobRequest.model_validate(row["payload"]))
                    else:
                        await self.broker.publish_event(self._with_log_url(
                            JobEvent.model_validate(row["payload"])))
            if rows:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1)",
                                   [r["id"] for r in rows])
        return len(rows)

    def _with_log_url(self, event: JobEvent) -> JobEvent:
        if not self.log_url_base or event.log_url:
            return event
        # The pseudo-job of an invalid workflow has no page of its own: its run page says why.
        page = (f"runs/{event.run_id}" if event.job_key == WORKFLOW_JOB_KEY
                else f"jobs/{event.job_id}")
        url = grant_link(f"{self.log_url_base.rstrip('/')}/{page}", self.grants, event.run_id)
        return event.model_copy(update={"log_url": url})

    async def _prune(self) -> None:
        try:
            await self.db.pool.execute(
                "DELETE FROM outbox WHERE published_at < now() - $1::interval", KEEP_PUBLISHED)
        except Exception:
            # Pruning is housekeeping: whatever fails here must not stop the relay.
            log.warning("could not prune the outbox; will try again", exc_info=True)

