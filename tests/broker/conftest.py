"""Broker conformance fixtures: every test runs against each implementation."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest

from common.broker import Broker
from common.broker.amqp import AmqpBroker
from common.broker.memory import MemoryBroker
from common.messages import EventKind, JobEvent, JobRequest, JobState, Repo, RunRequest

REPO = Repo(forge="forgejo", owner="acme", name="widget", clone_url="https://forge.example/acme/widget.git")


def run_request(priority: int = 0, request_id: str | None = None) -> RunRequest:
    return RunRequest(request_id=request_id or uuid.uuid4().hex, repo=REPO, commit_sha="a" * 40,
                      ref="refs/heads/main", event=EventKind.PUSH, branch="main",
                      workflow_source="workflow \"ci\" {}", priority=priority)


def job_request(label: str = "ubuntu-22.04", priority: int = 0, key: str = "build") -> JobRequest:
    return JobRequest(run_id=uuid.uuid4(), job_id=uuid.uuid4(), job_key=key, runs_on=label,
                      priority=priority)


def job_event(state: JobState = JobState.SUCCESS, sequence: int = 1) -> JobEvent:
    return JobEvent(run_id=uuid.uuid4(), job_id=uuid.uuid4(), job_key="build", workflow_name="ci",
                    state=state, sequence=sequence, repo=REPO, commit_sha="a" * 40,
                    request_id=uuid.uuid4().hex)


RawPublish = Callable[[str, bytes], Awaitable[None]]


@pytest.fixture(params=["memory", "amqp"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return request.param


async def delete_topology(url: str, brokers: list[AmqpBroker]) -> None:
    """Remove every queue and exchange the test's brokers declared."""
    queues = set().union(*(b.declared_queues for b in brokers))
    exchanges = set().union(*(b.declared_exchanges for b in brokers))
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)


@pytest.fixture
async def make_broker(broker_kind: str, broker_prefix: str,
                      amqp_url: str) -> AsyncIterator[Callable[[], Broker]]:
    """A factory of unconnected brokers sharing this test's topology.

    In memory all of them are the same process-wide instance, as in standalone mode; with
    RabbitMQ each is its own connection, as two processes would have.
    """
    shared = MemoryBroker(broker_prefix)
    made: list[Broker] = []

    def make() -> Broker:
        broker: Broker = (shared if broker_kind == "memory"
                          else AmqpBroker(amqp_url, broker_prefix, publish_timeout=10))
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()
    amqp = [b for b in made if isinstance(b, AmqpBroker)]
    if amqp:
        await delete_topology(amqp_url, amqp)


@pytest.fixture
async def broker(make_broker: Callable[[], Broker]) -> AsyncIterator[Broker]:
    async with make_broker() as connected:
        yield connected


@pytest.fixture
def publish_raw(broker: Broker) -> RawPublish:
    """Put arbitrary bytes on a job queue, bypassing the typed publish (a buggy or old peer)."""

    async def publish(label: str, body: bytes) -> None:
        if isinstance(broker, MemoryBroker):
            broker._queue(f"{broker.prefix}.jobs.{label}").put(broker._message(body))
            return
        assert isinstance(broker, AmqpBroker)
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(body), routing_key=f"{broker.prefix}.jobs.{label}")

    return publish
