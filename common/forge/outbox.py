"""The status outbox: updates for a forge, kept in PostgreSQL until the forge accepted them.

Integrations turn each `JobEvent` into an outbox row (`Outbox.enqueue`, keyed by the job and
ordered by `JobEvent.sequence`) and ack the event; an `OutboxWorker` sends the rows. This way
a forge that is down, slow or answering 500 delays statuses but loses none, and a restart of
the integration resumes where it stopped.

Ordering, per key (a job):
- rows are sent one at a time, lowest `sequence` first; a row that keeps failing holds back
  the later rows of its key (not those of other keys);
- a row that arrives after a higher sequence of its key was already delivered or tried (an
  event redelivered late by the broker) is marked `superseded` and never sent, so a final
  status is never overwritten by an earlier one; "tried" counts because a send that timed out
  may still have reached the forge;
- claims take a transaction-scoped advisory lock per target, and a key with a row in flight
  (leased) is skipped, so two integration instances never send one key's rows concurrently.

A sender raises on failure. An exception whose `retryable` attribute is False (a 404 or 422
from the forge: the same request will never succeed) marks the row `failed` and is logged;
any other exception schedules a retry after `Backoff.delay(attempts)`, forever. A sender
that crashed mid-flight leaves its lease to expire, then the row is sent again: senders must
be idempotent (a commit status POST is; the GitHub reporter resumes by sequence).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from common.forge.worker import ClaimWorker
from common.observability import tracer
from common.retry import Backoff
from common.tracing import context_from, current_traceparent

log = logging.getLogger(__name__)

# The payload key holding the trace context of the span that enqueued a row (never sent).
TRACE_KEY = "_solstice_traceparent"

@dataclass(frozen=True)
class OutboxItem:
    """One update to send: `payload` is what `enqueue` stored; `attempts` counts this one."""

    id: int
    target: str
    key: str
    sequence: int
    payload: dict[str, Any]
    attempts: int
    # The span that enqueued it (a run's job event), so its sending joins the run's trace.
    traceparent: str | None = None


Sender = Callable[[OutboxItem], Awaitable[None]]


def is_permanent(exc: BaseException) -> bool:
    """Whether a sender's failure will never go away by retrying (`exc.retryable` is False)."""
    return getattr(exc, "retryable", True) is False


class Outbox:
    """The rows of one `target` (a sender's name: "forgejo", "github") in `forge_outbox`."""

    def __init__(self, pool: asyncpg.Pool, target: str) -> None:
        self._pool = pool
        self.target = target

    async def enqueue(self, key: str, sequence: int, payload: dict[str, Any]) -> bool:
        """Add an update; False if (`key`, `sequence`) is already there (a redelivered event).

        The current trace context is stored with the payload (and taken out again by `claim`)."""
        traceparent = current_traceparent()
        if traceparent is not None:
            payload = {**payload, TRACE_KEY: traceparent}
        status = await self._pool.execute(
            "INSERT INTO forge_outbox (target, key, sequence, payload) VALUES ($1, $2, $3, $4::jsonb)"
            " ON CONFLICT (target, key, sequence) DO NOTHING",
            self.target, key, sequence, json.dumps(payload))
        return status == "INSERT 0 1"

    async def claim(self, *, limit: int, lease: float) -> list[OutboxItem]:
        """Lease the next due row of up to `limit` keys for `lease` seconds, one row per key."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                               "forge_outbox:" + self.target)
            await conn.execute(
                "UPDATE forge_outbox p SET state = 'superseded', finished_at = now(),"
                " lease_until = NULL"
                " WHERE p.target = $1 AND p.state = 'pending' AND EXISTS ("
                "  SELECT 1 FROM forge_outbox d WHERE d.target = p.target AND d.key = p.key"
                "  AND d.sequence > p.sequence"
                "  AND (d.state = 'delivered' OR (d.state = 'pending' AND d.attempts > 0)))",
                self.target)
            rows = await conn.fetch(
                "WITH heads AS ("
                "  SELECT DISTINCT ON (key) id, key, next_attempt_at FROM forge_outbox"
                "  WHERE target = $1 AND state = 'pending' ORDER BY key, sequence"
                "), due AS ("
                "  SELECT h.id FROM heads h WHERE h.next_attempt_at <= now() AND NOT EXISTS ("
                "    SELECT 1 FROM forge_outbox l WHERE l.target = $1 AND l.key = h.key"
                "    AND l.state = 'pending' AND l.lease_until > now())"
                "  ORDER BY h.next_attempt_at LIMIT $2"
                ")"
                " UPDATE forge_outbox o SET lease_until = now() + make_interval(secs => $3),"
                " attempts = o.attempts + 1 FROM due WHERE o.id = due.id"
                " RETURNING o.id, o.key, o.sequence, o.payload::text AS payload, o.attempts",
                self.target, limit, float(lease))
        items = []
        for row in rows:
            payload = json.loads(row["payload"])
            traceparent = payload.pop(TRACE_KEY, None)
            items.append(OutboxItem(row["id"], self.target, row["key"], row["sequence"], payload,
                                    row["attempts"], traceparent))
        return items

    async def delivered(self, item: OutboxItem) -> None:
        """The forge accepted `item`; `last_error` keeps what failed before, for the record."""
        await self._pool.execute(
            "UPDATE forge_outbox SET state = 'delivered', lease_until = NULL, finished_at = now()"
            " WHERE id = $1", item.id)

    async def failed(self, item: OutboxItem, error: str) -> None:
        """Give up on `item` (the forge refused it for good); later rows of its key proceed."""
        await self._pool.execute(
            "UPDATE forge_outbox SET state = 'failed', last_error = $2, lease_until = NULL,"
            " finished_at = now() WHERE id = $1", item.id, error[:2000])

    async def retry_later(self, item: OutboxItem, error: str, delay: float) -> None:
        await self._pool.execute(
            "UPDATE forge_outbox SET lease_until = NULL, last_error = $2,"
            " next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
            item.id, error[:2000], float(delay))

    async def backlog(self) -> int:
        """Rows still to be sent (for `solstice_outbox_backlog`)."""
        return await self._pool.fetchval(
            "SELECT count(*) FROM forge_outbox WHERE target = $1 AND state = 'pending'",
            self.target)

    async def counts(self) -> dict[str, int]:
        """Rows per state, for health checks and tests."""
        rows = await self._pool.fetch(
            "SELECT state, count(*) AS n FROM forge_outbox WHERE target = $1 GROUP BY state",
            self.target)
        return {r["state"]: r["n"] for r in rows}


class OutboxWorker(ClaimWorker[OutboxItem]):
    """Sends an `Outbox`'s rows with `send`, retrying with backoff until each is accepted.

    `run()` loops until cancelled: it wakes on `notify()` (call it after `enqueue`) or every
    `poll_interval` seconds (retries that came due, rows enqueued by another instance). Each
    send is bounded by `send_timeout`, which must stay below `lease`.
    """

    def __init__(self, outbox: Outbox, send: Sender, *, backoff: Backoff = Backoff(initial=1.0, maximum=300.0),
                 poll_interval: float = 1.0, lease: float = 120.0, send_timeout: float = 60.0,
                 batch: int = 32) -> None:
        if send_timeout >= lease:
            raise ValueError("send_timeout must be shorter than the lease")
        super().__init__(poll_interval=poll_interval, describe=f"{outbox.target} status outbox")
        self.outbox = outbox
        self._send = send
        self._backoff = backoff
        self._lease = lease
        self._send_timeout = send_timeout
        self._batch = batch

    async def claim(self) -> list[OutboxItem]:
        """One row per key, in rounds: a key's next row waits for the previous one."""
        return await self.outbox.claim(limit=self._batch, lease=self._lease)

    async def handle(self, item: OutboxItem) -> None:
        await self._deliver(item)

    async def _deliver(self, item: OutboxItem) -> None:
        with tracer(__name__).start_as_current_span(
                "outbox.send", context=context_from(item.traceparent)) as span:
            span.set_attribute("solstice.outbox.target", item.target)
            span.set_attribute("solstice.outbox.key", item.key)
            span.set_attribute("solstice.outbox.attempt", item.attempts)
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self._send(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if is_permanent(exc):
                    log.error("forge refused a status update for good; dropping it",
                              extra={"target": item.target, "key": item.key,
                                     "sequence": item.sequence, "error": reason})
                    await self.outbox.failed(item, reason)
                    return
                delay = self._backoff.delay(item.attempts)
                log.warning("status update not accepted; retrying",
                            extra={"target": item.target, "key": item.key,
                                   "sequence": item.sequence, "attempt": item.attempts,
                                   "retry_in": round(delay, 2), "error": reason})
                await self.outbox.retry_later(item, reason, delay)
                return
            await self.outbox.delivered(item)
