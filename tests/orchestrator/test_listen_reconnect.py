"""The outbox relay's wake-up machinery: the LISTEN connection comes back after the server
dropped it, and closing the relay never hangs when a wake-up races the cancel.

The hang was real: a draining host marked itself `stopped`, then waited for ever in
`OutboxRelay.close()`, because `asyncio.wait_for(event.wait(), t)` on Python 3.11 swallows a
cancel that arrives as the event fires (CPython gh-86296), and another host's NOTIFY landed
during the drain."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from common.broker import MemoryBroker
from common.supervise import Supervisor
from orchestrator.db import Database, migrate
from orchestrator.outbox import OutboxRelay

CHANNEL = "solstice_test_listen"


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    database = await Database.connect(pg_dsn, min_size=1, max_size=4)
    async with database.pool.acquire() as conn:
        await migrate(conn)
    yield database
    await database.close()


async def test_listen_reopens_after_its_backend_is_terminated(db: Database) -> None:
    payloads: asyncio.Queue[str] = asyncio.Queue()
    async with Supervisor() as supervisor:
        listener = await db.listen(CHANNEL, payloads.put_nowait)
        supervisor.spawn("listen", listener.run())
        await db.pool.execute("SELECT pg_notify($1, 'before')", CHANNEL)
        assert await asyncio.wait_for(payloads.get(), 5) == "before"

        terminated = await db.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = $1", f'LISTEN "{CHANNEL}"')
        assert terminated == 1
        # Reopened: the callback hears of it (NOTIFYs meanwhile are lost), then NOTIFYs flow.
        assert await asyncio.wait_for(payloads.get(), 10) == ""
        assert listener.connected
        await db.pool.execute("SELECT pg_notify($1, 'after')", CHANNEL)
        assert await asyncio.wait_for(payloads.get(), 5) == "after"
        assert supervisor.failure is None


async def test_close_never_hangs_when_a_wake_up_races_it(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = OutboxRelay(db, MemoryBroker("race"))

    async def nothing_to_relay() -> int:
        return 0

    monkeypatch.setattr(relay, "relay_once", nothing_to_relay)
    supervisor = Supervisor()
    started = time.monotonic()
    for attempt in range(2000):
        relay.start(supervisor)
        for _ in range(attempt % 3):
            await asyncio.sleep(0)
        relay.kick()
        # 0..3 loop turns between the wake-up and the cancel: one of them lands the cancel
        # after the event's waiter finished and before the relay resumed.
        for _ in range(attempt // 3 % 4):
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(2):
                await relay.close()
        except TimeoutError:
            pytest.fail(f"close() hung on attempt {attempt}: the relay survived its cancel")
    await supervisor.close()
    assert supervisor.failure is None
    assert time.monotonic() - started < 20
