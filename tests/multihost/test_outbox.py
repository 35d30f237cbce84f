"""The outbox relay never stops while its host lives: a broker fault, even one that surfaces
as a CancelledError leaking from the AMQP library, leaves the rows to the next attempt."""
from __future__ import annotations

import asyncio
import uuid

from common.broker import MemoryBroker
from common.messages import JobRequest
from orchestrator.db import Database
from orchestrator.outbox import OutboxRelay
from orchestrator.store import add_outbox, notify_outbox


class ChannelClosingBroker(MemoryBroker):
    """The in-process broker, whose first publish fails as aiormq's does when the channel
    closes under it: with a CancelledError the publishing task never asked for."""

    def __init__(self) -> None:
        super().__init__("outbox-test")
        self.failures_left = 1
        self.published: list[JobRequest] = []

    async def publish_job(self, request: JobRequest) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise asyncio.CancelledError()
        self.published.append(request)


async def test_a_leaked_cancellation_does_not_end_the_relay(db: Database) -> None:
    broker = ChannelClosingBroker()
    relay = OutboxRelay(db, broker)
    await relay.start()
    try:
        request = JobRequest(run_id=uuid.uuid4(), job_id=uuid.uuid4(), job_key="j", runs_on="x")
        async with db.transaction() as conn:
            await add_outbox(conn, request)
            await notify_outbox(conn)
        unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        async with asyncio.timeout(10):
            while await db.pool.fetchval(unpublished):
                await asyncio.sleep(0.05)
        assert broker.published == [request] and broker.failures_left == 0
    finally:
        await relay.close()


async def test_closing_the_relay_still_stops_it(db: Database) -> None:
    relay = OutboxRelay(db, MemoryBroker("outbox-test"))
    await relay.start()
    async with asyncio.timeout(5):
        await relay.close()
