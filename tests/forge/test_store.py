"""Migrations, the delivery log and the status outbox on a real PostgreSQL."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from common.forge.deliveries import DeliveryLog
from common.forge.errors import ForgeApiError
from common.forge.migrate import migrate, open_pool
from common.forge.outbox import Outbox, OutboxItem, OutboxWorker
from common.retry import Backoff

FAST = Backoff(initial=0.01, maximum=0.05)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(pg_dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()


async def test_migrations_apply_once_and_concurrently(pg_dsn: str) -> None:
    conns = [await asyncpg.connect(pg_dsn) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(a) for a in applied) == [0, 0, 3]
        assert await migrate(conns[0]) == []
        assert await conns[0].fetchval("SELECT count(*) FROM forge_outbox") == 0
    finally:
        for c in conns:
            await c.close()


async def test_delivery_log_survives_a_new_pool(pool: asyncpg.Pool, pg_dsn: str) -> None:
    log = DeliveryLog(pool)
    assert await log.seen("forgejo", "d-1") is None
    assert await log.record("forgejo", "d-1", "published")
    assert not await log.record("forgejo", "d-1", "ignored")
    assert await log.seen("gitea", "d-1") is None  # ids are per forge
    other = await open_pool(pg_dsn, min_size=1, max_size=1)
    try:
        assert await DeliveryLog(other).seen("forgejo", "d-1") == "published"
    finally:
        await other.close()


class Recorder:
    """A sender that records what it was given and fails as told."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.failures: list[Exception] = []

    async def __call__(self, item: OutboxItem) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((item.key, item.sequence))


async def test_in_order_per_key_with_retries(pool: asyncpg.Pool) -> None:
    outbox = Outbox(pool, "test")
    send = Recorder()
    send.failures = [ForgeApiError("boom", status=500, retryable=True), TimeoutError("slow")]
    for seq in (1, 2, 3):
        assert await outbox.enqueue("job-a", seq, {"n": seq})
    assert not await outbox.enqueue("job-a", 2, {"n": 2})  # a redelivered event
    worker = OutboxWorker(outbox, send, backoff=FAST, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        while len(send.sent) < 3:
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert send.sent == [("job-a", 1), ("job-a", 2), ("job-a", 3)]
    assert await outbox.counts() == {"delivered": 3}
    last = await pool.fetchrow("SELECT attempts, last_error FROM forge_outbox WHERE sequence = 1")
    assert last["attempts"] == 3 and "slow" in last["last_error"]


async def test_late_earlier_event_never_overrides_a_final_one(pool: asyncpg.Pool) -> None:
    outbox = Outbox(pool, "test")
    send = Recorder()
    worker = OutboxWorker(outbox, send, backoff=FAST)
    await outbox.enqueue("job-a", 3, {"state": "success"})
    await worker.run_once()
    await outbox.enqueue("job-a", 2, {"state": "running"})  # the broker redelivered it late
    await worker.run_once()
    assert send.sent == [("job-a", 3)]
    assert await outbox.counts() == {"delivered": 1, "superseded": 1}


async def test_permanent_failure_is_dropped_and_later_rows_proceed(pool: asyncpg.Pool) -> None:
    outbox = Outbox(pool, "test")
    send = Recorder()
    send.failures = [ForgeApiError("gone", status=404, retryable=False)]
    await outbox.enqueue("job-a", 1, {})
    await outbox.enqueue("job-a", 2, {})
    await OutboxWorker(outbox, send, backoff=FAST).run_once()
    assert send.sent == [("job-a", 2)]
    assert await outbox.counts() == {"failed": 1, "delivered": 1}


async def test_a_failing_key_does_not_hold_back_others(pool: asyncpg.Pool) -> None:
    outbox = Outbox(pool, "test")
    sent: list[str] = []

    async def send(item: OutboxItem) -> None:
        if item.key == "stuck":
            raise ConnectionError("refused")
        sent.append(item.key)

    await outbox.enqueue("stuck", 1, {})
    await outbox.enqueue("fine", 1, {})
    await OutboxWorker(outbox, send, backoff=Backoff(initial=60, maximum=60)).run_once()
    assert sent == ["fine"]
    assert (await outbox.counts())["pending"] == 1


async def test_restart_resumes_pending_and_expired_leases(pool: asyncpg.Pool, pg_dsn: str) -> None:
    outbox = Outbox(pool, "test")
    await outbox.enqueue("job-a", 1, {"n": 1})
    await outbox.enqueue("job-b", 1, {"n": 1})

    # A first "process" claims job-a and dies mid-send, holding a short lease.
    claimed = await outbox.claim(limit=1, lease=0.2)
    assert len(claimed) == 1
    await asyncio.sleep(0.3)

    fresh = await open_pool(pg_dsn, min_size=1, max_size=2)
    try:
        send = Recorder()
        await OutboxWorker(Outbox(fresh, "test"), send, backoff=FAST).run_once()
        assert sorted(send.sent) == [("job-a", 1), ("job-b", 1)]
    finally:
        await fresh.close()


async def test_concurrent_workers_never_send_one_key_twice_at_once(pool: asyncpg.Pool) -> None:
    outbox = Outbox(pool, "test")
    in_flight: set[str] = set()
    order: dict[str, list[int]] = {}

    async def send(item: OutboxItem) -> None:
        assert item.key not in in_flight
        in_flight.add(item.key)
        await asyncio.sleep(0.005)
        order.setdefault(item.key, []).append(item.sequence)
        in_flight.discard(item.key)

    for key in ("a", "b", "c"):
        for seq in range(1, 6):
            await outbox.enqueue(key, seq, {})
    workers = [OutboxWorker(outbox, send, backoff=FAST, batch=2) for _ in range(3)]
    while (await outbox.counts()).get("delivered", 0) < 15:
        await asyncio.gather(*(w.run_once() for w in workers))
    assert order == {k: [1, 2, 3, 4, 5] for k in ("a", "b", "c")}
