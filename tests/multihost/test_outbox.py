"""The outbox relay keeps relaying across its idle sweeps, and the sweep prunes old rows.

Its pruning query once failed on every sweep (a timestamptz compared with an untyped
interval parameter) and the exception ended the relay: five idle seconds after start a host
stopped publishing, and a job handed back to the queue waited for ever."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from common.broker import MemoryBroker
from common.messages import JobRequest
from common.supervise import Supervisor
from orchestrator import outbox
from orchestrator.db import Database
from orchestrator.outbox import OutboxRelay
from orchestrator.store import OUTBOX_CHANNEL, add_outbox, notify_outbox

UNPUBLISHED = "SELECT count(*) FROM outbox WHERE published_at IS NULL"


class RecordingBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__("outbox-test")
        self.published: list[JobRequest] = []

    async def publish_job(self, request: JobRequest) -> None:
        self.published.append(request)


def job_request() -> JobRequest:
    return JobRequest(run_id=uuid.uuid4(), job_id=uuid.uuid4(), job_key="j", runs_on="x")


async def test_relay_publishes_after_idle_sweeps_and_prunes_old_rows(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "SWEEP_SECONDS", 0.1)
    async with db.transaction() as conn:
        await add_outbox(conn, job_request())
        await conn.execute("UPDATE outbox SET published_at = now() - interval '2 hours'")
    broker = RecordingBroker()
    relay = OutboxRelay(db, broker)
    supervisor = Supervisor()
    listener = await db.listen(OUTBOX_CHANNEL, lambda _payload: relay.kick())
    supervisor.spawn("outbox-listen", listener.run())
    relay.start(supervisor)
    try:
        async with asyncio.timeout(10):
            while await db.pool.fetchval("SELECT count(*) FROM outbox"):
                await asyncio.sleep(0.05)  # the sweep deleted the long-published row
        await asyncio.sleep(0.5)  # several idle sweeps
        request = job_request()
        async with db.transaction() as conn:
            await add_outbox(conn, request)
            await notify_outbox(conn)
        async with asyncio.timeout(10):
            while await db.pool.fetchval(UNPUBLISHED):
                await asyncio.sleep(0.05)
        assert broker.published == [request]
    finally:
        async with asyncio.timeout(5):
            await relay.close()
            await supervisor.close()
        assert supervisor.failure is None
