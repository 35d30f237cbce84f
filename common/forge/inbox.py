"""The webhook inbox: a delivery is stored, answered, and processed later by a worker.

A forge gives up on a delivery after a few seconds (GitHub after 10 s, and does not retry by
itself), so nothing slow or fallible happens while it waits: the edge verifies the signature,
classifies the body (pure, no I/O) and stores the delivery in `forge_inbox` with one
`INSERT ... ON CONFLICT DO NOTHING`, which is also the deduplication by delivery id. Then:
- 202 `accepted`: stored `pending`, the worker will plan and publish its run;
- 200 `ignored`: stored `ignored` with the reason (an event that starts nothing);
- 200 `duplicate`: that delivery id was stored before (a redelivery);
- 400: stored `rejected` with the reason (a body Solstice cannot take; never retried);
- 503: the database did not take it; the forge (or GitHub recovery) delivers it again.

`InboxWorker` claims due `pending` deliveries of its forges (`FOR UPDATE SKIP LOCKED` with a
lease, so several integration processes share the work and none processes a delivery another
holds), hands each to the integration's processor (fetch the workflow at the commit, trust
policy, triggers, publish the confirmed `RunRequest`) and records the outcome: `done` or
`ignored`. A failure is retried after `Backoff.delay(attempts)`; a delivery that failed
`max_attempts` times, or failed for good (a forge refusing with a 4xx, an App not installed),
is `parked` with its last error: never dropped, listed by the integrations' `inbox` command
and put back with `inbox --retry ID`. A worker that died mid-delivery leaves its lease to
expire and the delivery is processed again: publishing twice is harmless, the orchestrator
records one run per request id.

The worker wakes when its own process stored a delivery, on `NOTIFY forge_inbox` (a trigger
sends it for a delivery stored pending by any process, or put back by `inbox --retry`), and
every `poll_interval` seconds (retries come due, a NOTIFY lost while the LISTEN connection
reconnected).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse

from common.batching import Coalescer
from common.forge.answering import Answering
from common.forge.config import InboxSettings
from common.forge.errors import WebhookRejected
from common.forge.events import ApprovalSent, Ignored, Published
from common.forge.outbox import is_permanent
from common.forge.webhook import answer
from common.forge.worker import ClaimWorker
from common.observability import tracer
from common.postgres import DATABASE_ERRORS
from common.retry import raise_if_cancelling
from common.tracing import context_from, current_traceparent

log = logging.getLogger(__name__)

ERROR_LIMIT = 2000
# How often a worker deletes the finished deliveries older than `keep_finished_days`.
PRUNE_INTERVAL = 3600.0
# The NOTIFY channel of deliveries stored pending (the trigger of migration 0002).
CHANNEL = "forge_inbox"
# How often the LISTEN connection is looked at; a lost one is opened again.
LISTEN_CHECK = 1.0
DEFAULT_SETTINGS = InboxSettings()


class InboxState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    IGNORED = "ignored"
    REJECTED = "rejected"
    PARKED = "parked"


@dataclass(frozen=True)
class Received:
    """A delivery as it arrived: its forge, id, event name and signed bytes."""

    forge: str
    delivery_id: str
    event: str
    body: bytes


@dataclass(frozen=True)
class InboxItem:
    """A delivery claimed for processing; `attempts` counts this one."""

    id: int
    forge: str
    delivery_id: str
    event: str
    body: bytes
    attempts: int
    trace_context: str | None = None  # the storing request's `traceparent`


class InboxEntry(BaseModel):
    """A stored delivery as an operator sees it (the integrations' `inbox` command, and the
    `/internal/inbox` answers that `ciadm inbox` reads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: int
    forge: str
    delivery_id: str
    event: str
    state: InboxState
    outcome: str
    attempts: int
    last_error: str
    received_at: datetime
    next_attempt_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON values (times in ISO 8601)."""
        return self.model_dump(mode="json")


_ENTRY_COLUMNS = ("id, forge, delivery_id, event, state, outcome, attempts, last_error,"
                  " received_at, next_attempt_at")


def _entry(row: asyncpg.Record) -> InboxEntry:
    return InboxEntry.model_validate(dict(row))


@dataclass(frozen=True)
class _Stored:
    """One delivery to store, as `Inbox.store` was given it."""

    received: Received
    state: InboxState
    outcome: str
    trace_context: str | None


class Inbox:
    """The `forge_inbox` table (see `common/forge/migrations/0002_inbox.sql`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        # Webhooks arrive in bursts (a push to many repositories, a redelivery sweep): those
        # stored while an INSERT is in flight share the next one, one round trip and one commit.
        self._stores: Coalescer[_Stored, bool] = Coalescer(self._store_many)
        self._finishes: Coalescer[tuple[int, str, str], None] = Coalescer(self._finish_many)

    async def store(self, received: Received, state: InboxState, outcome: str = "") -> bool:
        """Store a delivery (one statement, shared with the deliveries stored at the same
        moment); False if its id was stored before."""
        return await self._stores.submit(
            _Stored(received, state, outcome[:ERROR_LIMIT], current_traceparent()))

    async def _store_many(self, batch: Sequence[_Stored]) -> list[bool]:
        rows = await self._pool.fetch(
            "INSERT INTO forge_inbox (forge, delivery_id, event, body, state, outcome, finished_at,"
            " trace_context) SELECT forge, delivery_id, event, body, state, outcome,"
            " CASE WHEN state <> 'pending' THEN now() END, trace_context FROM unnest("
            " $1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::text[])"
            " AS d(forge, delivery_id, event, body, state, outcome, trace_context)"
            " ON CONFLICT (forge, delivery_id) DO NOTHING RETURNING forge, delivery_id",
            [s.received.forge for s in batch], [s.received.delivery_id for s in batch],
            [s.received.event for s in batch], [s.received.body for s in batch],
            [s.state.value for s in batch], [s.outcome for s in batch],
            [s.trace_context for s in batch])
        stored = {(r["forge"], r["delivery_id"]) for r in rows}
        # A delivery id twice in one batch is stored once: the first call stores it, the
        # others are its duplicates, as they would be one statement apart.
        results = []
        for item in batch:
            key = (item.received.forge, item.received.delivery_id)
            results.append(key in stored)
            stored.discard(key)
        return results

    async def claim(self, forges: Sequence[str], *, limit: int, lease: float) -> list[InboxItem]:
        """Lease up to `limit` due pending deliveries of `forges` for `lease` seconds."""
        rows = await self._pool.fetch(
            "UPDATE forge_inbox i SET lease_until = now() + make_interval(secs => $3),"
            " attempts = i.attempts + 1 FROM ("
            "  SELECT id FROM forge_inbox WHERE state = 'pending' AND forge = ANY($1)"
            "  AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())"
            "  ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            ") due WHERE i.id = due.id"
            " RETURNING i.id, i.forge, i.delivery_id, i.event, i.body, i.attempts, i.trace_context",
            list(forges), limit, float(lease))
        return [InboxItem(**dict(r)) for r in rows]

    async def finish(self, item: InboxItem, state: InboxState, outcome: str) -> None:
        """Record the outcome of a processed delivery (`done` or `ignored`); the deliveries
        of a round finish together, in one statement."""
        await self._finishes.submit((item.id, state.value, outcome[:ERROR_LIMIT]))

    async def _finish_many(self, batch: Sequence[tuple[int, str, str]]) -> list[None]:
        await self._pool.execute(
            "UPDATE forge_inbox i SET state = d.state, outcome = d.outcome, lease_until = NULL,"
            " finished_at = now() FROM unnest($1::bigint[], $2::text[], $3::text[])"
            " AS d(id, state, outcome) WHERE i.id = d.id",
            [row[0] for row in batch], [row[1] for row in batch], [row[2] for row in batch])
        return [None] * len(batch)

    async def park(self, item: InboxItem, error: str) -> None:
        await self._pool.execute(
            "UPDATE forge_inbox SET state = 'parked', last_error = $2, lease_until = NULL,"
            " finished_at = now() WHERE id = $1", item.id, error[:ERROR_LIMIT])

    async def retry_later(self, item: InboxItem, error: str, delay: float) -> None:
        await self._pool.execute(
            "UPDATE forge_inbox SET lease_until = NULL, last_error = $2,"
            " next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
            item.id, error[:ERROR_LIMIT], float(delay))

    async def find(self, forge: str, delivery_id: str) -> InboxEntry | None:
        """The stored delivery `delivery_id` of `forge`, None if it never arrived."""
        row = await self._pool.fetchrow(
            f"SELECT {_ENTRY_COLUMNS} FROM forge_inbox WHERE forge = $1 AND delivery_id = $2",
            forge, delivery_id)
        return None if row is None else _entry(row)

    async def stored(self, forge: str, delivery_ids: Collection[str]) -> set[str]:
        """Those of `delivery_ids` of `forge` that arrived (in any state)."""
        rows = await self._pool.fetch(
            "SELECT delivery_id FROM forge_inbox WHERE forge = $1"
            " AND delivery_id = ANY($2::text[])", forge, list(delivery_ids))
        return {row["delivery_id"] for row in rows}

    async def entries(self, forges: Sequence[str], states: Sequence[InboxState], *,
                      limit: int = 100) -> list[InboxEntry]:
        """The oldest `limit` deliveries of `forges` in `states`."""
        rows = await self._pool.fetch(
            f"SELECT {_ENTRY_COLUMNS} FROM forge_inbox WHERE forge = ANY($1) AND state = ANY($2)"
            " ORDER BY id LIMIT $3", list(forges), [s.value for s in states], limit)
        return [_entry(r) for r in rows]

    async def retry(self, forges: Sequence[str], entry_id: int) -> InboxEntry | None:
        """Put a parked delivery back to pending, due now, its attempts reset; the delivery
        as it is now, None if there is no parked delivery `entry_id` of `forges`."""
        row = await self._pool.fetchrow(
            "UPDATE forge_inbox SET state = 'pending', attempts = 0, next_attempt_at = now(),"
            " finished_at = NULL WHERE id = $1 AND forge = ANY($2) AND state = 'parked'"
            f" RETURNING {_ENTRY_COLUMNS}", entry_id, list(forges))
        return None if row is None else _entry(row)

    async def prune(self, forges: Sequence[str], older_than: float) -> int:
        """Delete the finished deliveries of `forges` (done, ignored, rejected) received more
        than `older_than` seconds ago; parked ones stay until retried. How many went."""
        status = await self._pool.execute(
            "DELETE FROM forge_inbox WHERE forge = ANY($1) AND state IN ('done', 'ignored',"
            " 'rejected') AND received_at < now() - make_interval(secs => $2)",
            list(forges), float(older_than))
        return int(status.split()[-1])

    async def counts(self, forges: Sequence[str]) -> dict[str, int]:
        """Deliveries of `forges` per state."""
        rows = await self._pool.fetch(
            "SELECT state, count(*) AS n FROM forge_inbox WHERE forge = ANY($1) GROUP BY state",
            list(forges))
        return {r["state"]: r["n"] for r in rows}


async def receive(inbox: Inbox, received: Received,
                  classify: Callable[[], object], wake: Callable[[], None]) -> JSONResponse:
    """Store one verified delivery and answer it (see the module docstring).

    `classify` parses and classifies the body without I/O: it returns `Ignored` or what the
    worker will process, or raises `WebhookRejected`; a 400 is stored as rejected, any
    other refusal (401: signed with another repository's secret) stores nothing.
    """
    context = {"forge": received.forge, "delivery": received.delivery_id,
               "event": received.event}
    try:
        outcome = classify()
    except WebhookRejected as exc:
        if exc.status == 400:
            await inbox.store(received, InboxState.REJECTED, exc.message)
        raise
    if isinstance(outcome, Ignored):
        if not await inbox.store(received, InboxState.IGNORED, outcome.reason):
            return answer("duplicate", f"delivery {received.delivery_id} was received before")
        log.info("webhook ignored", extra=context | {"reason": outcome.reason})
        return answer("ignored", outcome.reason)
    if not await inbox.store(received, InboxState.PENDING):
        log.info("redelivery of a delivery already received", extra=context)
        return answer("duplicate", f"delivery {received.delivery_id} was received before")
    wake()
    return answer("accepted", "stored; its run is planned and published next", status=202,
                  delivery=received.delivery_id)


Processor = Callable[[InboxItem], Awaitable[Published | Ignored | ApprovalSent]]


def is_final(exc: BaseException) -> bool:
    """Whether processing failed for good: retrying the same delivery cannot succeed."""
    return isinstance(exc, WebhookRejected) or is_permanent(exc)


class InboxWorker(ClaimWorker[InboxItem]):
    """Processes the pending deliveries of `forges` with `process` (module docstring)."""

    def __init__(self, inbox: Inbox, forges: Sequence[str], process: Processor, *,
                 settings: InboxSettings = DEFAULT_SETTINGS, lease: float = 120.0,
                 process_timeout: float = 60.0, batch: int = 16,
                 answering: Answering | None = None) -> None:
        if process_timeout >= lease:
            raise ValueError("process_timeout must be shorter than the lease")
        super().__init__(poll_interval=settings.poll_interval,
                         describe=f"{'/'.join(forges)} webhook inbox")
        self.inbox = inbox
        self.forges = tuple(forges)
        self._process = process
        self._settings = settings
        self._backoff = settings.backoff
        self._lease = lease
        self._process_timeout = process_timeout
        self._batch = batch
        self._answering = answering or Answering()
        self._next_prune = 0.0

    async def claim(self) -> list[InboxItem]:
        """The due deliveries (pruning the old finished ones first, once an hour), once the
        web edge has a quiet moment (`common.forge.answering`)."""
        await self._answering.quiet(self._settings.yield_to_webhooks)
        now = asyncio.get_running_loop().time()
        if now >= self._next_prune:
            pruned = await self.inbox.prune(self.forges, self._settings.keep_finished_days * 86400)
            if pruned:
                log.info("pruned finished deliveries", extra={"deliveries": pruned,
                                                              "forges": ",".join(self.forges)})
            self._next_prune = now + PRUNE_INTERVAL
        return await self.inbox.claim(self.forges, limit=self._batch, lease=self._lease)

    async def listen(self, pool: asyncpg.Pool) -> None:
        """Wake on `NOTIFY forge_inbox` for this worker's forges (a delivery stored by another
        process, or put back by `inbox --retry`); runs until cancelled, reconnecting after a
        database restart (the poll covers the gap)."""
        def notified(conn: object, pid: int, channel: str, forge: str) -> None:
            if forge in self.forges:
                self.notify()

        while True:
            try:
                async with pool.acquire() as conn:
                    await conn.add_listener(CHANNEL, notified)
                    try:
                        while not conn.is_closed():
                            await asyncio.sleep(LISTEN_CHECK)
                    finally:
                        if not conn.is_closed():  # back to the pool without its listener
                            await conn.remove_listener(CHANNEL, notified)
            except DATABASE_ERRORS as exc:
                raise_if_cancelling(exc)  # the UNLISTEN on a dying connection replaced it
                log.warning("inbox LISTEN connection lost; reconnecting",
                            extra={"error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(LISTEN_CHECK)

    async def handle(self, item: InboxItem) -> None:
        context = {"forge": item.forge, "delivery": item.delivery_id, "event": item.event,
                   "attempt": item.attempts}
        with tracer(__name__).start_as_current_span(
                "inbox.process", context=context_from(item.trace_context)) as span:
            span.set_attribute("solstice.forge", item.forge)
            span.set_attribute("solstice.webhook.delivery", item.delivery_id)
            span.set_attribute("solstice.inbox.attempt", item.attempts)
            try:
                async with asyncio.timeout(self._process_timeout):
                    outcome = await self._process(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(item, exc, context)
                return
        if isinstance(outcome, Ignored):
            log.info("delivery needs no run", extra=context | {"reason": outcome.reason})
            await self.inbox.finish(item, InboxState.IGNORED, outcome.reason)
        elif isinstance(outcome, ApprovalSent):
            await self.inbox.finish(item, InboxState.DONE, f"approval published: {outcome.reason}")
        else:
            await self.inbox.finish(item, InboxState.DONE,
                                    f"published {outcome.request.request_id}")

    async def _failed(self, item: InboxItem, exc: Exception, context: dict[str, Any]) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if is_final(exc) or item.attempts >= self._settings.max_attempts:
            log.error("delivery parked; `inbox --retry %d` processes it again", item.id,
                      extra=context | {"error": reason})
            await self.inbox.park(item, reason)
            return
        delay = self._backoff.delay(item.attempts)
        log.warning("delivery not processed; retrying",
                    extra=context | {"retry_in": round(delay, 2), "error": reason})
        await self.inbox.retry_later(item, reason, delay)
