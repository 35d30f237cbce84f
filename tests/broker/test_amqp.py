"""RabbitMQ-only behaviour: durability of confirmed publishes, refusals, credentials, restarts."""
from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from common.broker import BrokerError, Delivery, open_broker
from common.broker.amqp import AmqpBroker
from common.broker.memory import MemoryBroker
from common.messages import JobRequest, decode
from tests.broker.conftest import delete_topology, job_request, run_request


@pytest.fixture
async def amqp(amqp_url: str, broker_prefix: str) -> AsyncIterator[AmqpBroker]:
    broker = AmqpBroker(amqp_url, broker_prefix, publish_timeout=5)
    async with broker:
        yield broker
    await delete_topology(amqp_url, [broker])


async def _channel(url: str) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(url)
    return connection, await connection.channel()


async def test_confirmed_publish_is_in_the_queue(amqp: AmqpBroker) -> None:
    await amqp.publish_job(job_request("durable"))
    connection, channel = await _channel(amqp.url)
    async with connection:
        queue = await channel.declare_queue(f"{amqp.prefix}.jobs.durable", passive=True)
        assert queue.declaration_result.message_count == 1


async def test_unroutable_publish_raises(amqp: AmqpBroker) -> None:
    connection, channel = await _channel(amqp.url)
    async with connection:
        await channel.queue_delete(f"{amqp.prefix}.runs")
    with pytest.raises(BrokerError, match="could not route"):
        await amqp.publish_run(run_request())


async def test_nacked_publish_raises(amqp: AmqpBroker) -> None:
    connection, channel = await _channel(amqp.url)
    async with connection:
        await channel.queue_delete(f"{amqp.prefix}.runs")
        await channel.declare_queue(f"{amqp.prefix}.runs", durable=True,
                                    arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    with pytest.raises(BrokerError, match=r"refused a message .*\(nack\)"):
        await amqp.publish_run(run_request())


async def test_wrong_password_is_a_clear_error(broker_prefix: str) -> None:
    url = "amqp://guest:not-the-password@127.0.0.1:5672/"
    with pytest.raises(BrokerError) as info:
        await AmqpBroker(url, broker_prefix, connect_attempts=1).connect()
    assert "refused the credentials" in str(info.value)
    assert "not-the-password" not in str(info.value)


async def test_unreachable_broker_gives_up_after_attempts(broker_prefix: str) -> None:
    with pytest.raises(BrokerError, match="cannot reach RabbitMQ"):
        await AmqpBroker("amqp://guest:guest@127.0.0.1:1/", broker_prefix,
                         connect_attempts=2).connect()


def test_open_broker_picks_by_url(amqp_url: str) -> None:
    assert isinstance(open_broker(None), MemoryBroker)
    assert isinstance(open_broker(amqp_url), AmqpBroker)
    with pytest.raises(BrokerError, match="unsupported broker URL"):
        open_broker("redis://localhost")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.slow
async def test_broker_restart_mid_traffic_loses_nothing(amqp_url: str, broker_prefix: str) -> None:
    """Publish 300 jobs while RabbitMQ stops and starts; every confirmed one is consumed."""
    publisher = AmqpBroker(amqp_url, broker_prefix, publish_timeout=60, reconnect_interval=0.5)
    consumer = AmqpBroker(amqp_url, broker_prefix, publish_timeout=60, reconnect_interval=0.5)
    seen: list[uuid.UUID] = []
    confirmed: set[uuid.UUID] = set()

    async def record(delivery: Delivery) -> None:
        seen.append(decode(delivery.body, JobRequest).job_id)
        # Hold each delivery a moment so some are unacked when the broker stops.
        await asyncio.sleep(0.02)
        await delivery.ack()

    async def publish_all() -> None:
        for n in range(300):
            request = job_request("restart", key=str(n))
            await publisher.publish_job(request)
            confirmed.add(request.job_id)
            await asyncio.sleep(0.01)

    try:
        async with publisher, consumer:
            await consumer.consume_jobs("restart", record, prefetch=8)
            traffic = asyncio.create_task(publish_all())
            await asyncio.sleep(0.8)
            await asyncio.to_thread(_rabbitmqctl, "stop_app")
            await asyncio.sleep(1.0)
            await asyncio.to_thread(_rabbitmqctl, "start_app")
            await asyncio.to_thread(_rabbitmqctl, "await_startup")
            await asyncio.wait_for(traffic, 90)
            for _ in range(300):
                if confirmed <= set(seen):
                    break
                await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(_rabbitmqctl, "start_app")
        await delete_topology(amqp_url, [publisher, consumer])
    assert len(confirmed) == 300
    missing = confirmed - set(seen)
    assert not missing, f"{len(missing)} confirmed jobs never delivered"
    duplicates = len(seen) - len(set(seen))
    print(f"restart: 300 confirmed, {len(set(seen))} delivered, {duplicates} redelivered twice")


@pytest.mark.slow
async def test_subscribe_and_cancel_while_the_broker_is_down(amqp_url: str, broker_prefix: str) -> None:
    """A consumer paused and resumed during an outage (as a full worker does) works after it."""
    broker = AmqpBroker(amqp_url, broker_prefix, publish_timeout=60, reconnect_interval=0.5)
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def keep(delivery: Delivery) -> None:
        await got.put(delivery)
        await delivery.ack()

    try:
        async with broker:
            paused = await broker.consume_jobs("outage", keep, prefetch=1)
            await asyncio.to_thread(_rabbitmqctl, "stop_app")
            try:
                cancelling = asyncio.create_task(paused.cancel())
                resuming = asyncio.create_task(broker.consume_jobs("outage", keep, prefetch=1))
                await asyncio.sleep(1.0)
                assert not resuming.done(), "subscribing waits for the broker, it does not fail"
                # Cancelling does not wait for the broker (a drain must be able to finish).
                await asyncio.wait_for(cancelling, 10)
            finally:
                await asyncio.to_thread(_rabbitmqctl, "start_app")
                await asyncio.to_thread(_rabbitmqctl, "await_startup")
            await asyncio.wait_for(cancelling, 30)
            await asyncio.wait_for(resuming, 30)
            request = job_request("outage")
            await broker.publish_job(request)
            assert decode((await asyncio.wait_for(got.get(), 20)).body, JobRequest) == request
            await asyncio.sleep(1.0)
            assert got.empty(), "the cancelled consumer was not restored"
    finally:
        await asyncio.to_thread(_rabbitmqctl, "start_app")
        await delete_topology(amqp_url, [broker])
