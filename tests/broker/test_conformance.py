"""The Broker contract, checked identically against every implementation."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from common.broker import Broker, Delivery
from common.broker.base import REASON_HEADER, SOURCE_HEADER, BrokerError
from common.messages import JobEvent, JobRequest, JobState, RunRequest, decode, encode
from tests.broker.conftest import RawPublish, job_event, job_request, run_request

WAIT = 5.0


class Inbox:
    """A handler that keeps every delivery, unsettled, for the test to inspect."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[Delivery] = asyncio.Queue()

    async def __call__(self, delivery: Delivery) -> None:
        await self.items.put(delivery)

    async def next(self, timeout: float = WAIT) -> Delivery:
        return await asyncio.wait_for(self.items.get(), timeout)

    async def nothing_within(self, seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return self.items.empty()


async def test_run_roundtrip(broker: Broker) -> None:
    inbox = Inbox()
    await broker.consume_runs(inbox)
    request = run_request(priority=3)
    await broker.publish_run(request)
    delivery = await inbox.next()
    assert decode(delivery.body, RunRequest) == request
    assert delivery.redelivered is False
    await delivery.ack()


async def test_jobs_are_routed_by_label(broker: Broker) -> None:
    illumos, linux = Inbox(), Inbox()
    await broker.consume_jobs("illumos", illumos, prefetch=4)
    await broker.consume_jobs("linux", linux, prefetch=4)
    await broker.publish_job(job_request("linux", key="l"))
    await broker.publish_job(job_request("illumos", key="i"))
    assert decode((await illumos.next()).body, JobRequest).job_key == "i"
    assert decode((await linux.next()).body, JobRequest).job_key == "l"
    assert await illumos.nothing_within(0.2) and linux.items.empty()


async def test_job_published_before_any_consumer_waits(broker: Broker) -> None:
    await broker.publish_job(job_request("late-label", key="early"))
    inbox = Inbox()
    await broker.consume_jobs("late-label", inbox, prefetch=1)
    assert decode((await inbox.next()).body, JobRequest).job_key == "early"


async def test_prefetch_bounds_unacked_deliveries(broker: Broker) -> None:
    for n in range(5):
        await broker.publish_job(job_request("cap", key=str(n)))
    inbox = Inbox()
    await broker.consume_jobs("cap", inbox, prefetch=2)
    first, second = await inbox.next(), await inbox.next()
    assert await inbox.nothing_within(0.3)
    await first.ack()
    third = await inbox.next()
    assert await inbox.nothing_within(0.3)
    for delivery in (second, third):
        await delivery.ack()
    await inbox.next()
    await inbox.next()


async def test_priority_order_then_fifo(broker: Broker) -> None:
    for priority, key in [(0, "low"), (5, "mid-1"), (1, "one"), (9, "top"), (5, "mid-2"), (42, "clamped")]:
        await broker.publish_job(job_request("prio", priority=priority, key=key))
    inbox = Inbox()
    await broker.consume_jobs("prio", inbox, prefetch=1)
    order = []
    for _ in range(6):
        delivery = await inbox.next()
        order.append(decode(delivery.body, JobRequest).job_key)
        await delivery.ack()
    # 42 is clamped to the maximum (9) and so queues behind the 9 published before it.
    assert order == ["top", "clamped", "mid-1", "mid-2", "one", "low"]


async def test_runs_are_prioritised(broker: Broker) -> None:
    await broker.publish_run(run_request(priority=0, request_id="pr"))
    await broker.publish_run(run_request(priority=5, request_id="main"))
    inbox = Inbox()
    await broker.consume_runs(inbox, prefetch=1)
    first = await inbox.next()
    await first.ack()
    second = await inbox.next()
    await second.ack()
    assert [decode(d.body, RunRequest).request_id for d in (first, second)] == ["main", "pr"]


async def test_requeue_redelivers_with_flag(broker: Broker) -> None:
    inbox = Inbox()
    await broker.consume_jobs("rq", inbox, prefetch=1)
    request = job_request("rq")
    await broker.publish_job(request)
    first = await inbox.next()
    assert first.redelivered is False
    await first.requeue()
    again = await inbox.next()
    assert again.redelivered is True
    assert decode(again.body, JobRequest) == request
    await again.ack()
    assert await inbox.nothing_within(0.3)


async def test_settling_twice_is_refused(broker: Broker) -> None:
    inbox = Inbox()
    await broker.consume_jobs("twice", inbox, prefetch=1)
    await broker.publish_job(job_request("twice"))
    delivery = await inbox.next()
    await delivery.ack()
    assert delivery.settled
    with pytest.raises(RuntimeError, match="already settled"):
        await delivery.requeue()


async def test_dead_letter_keeps_body_and_reason(broker: Broker) -> None:
    inbox, dead = Inbox(), Inbox()
    await broker.consume_jobs("dl", inbox, prefetch=1)
    await broker.consume_dead_letters(dead)
    request = job_request("dl")
    await broker.publish_job(request)
    await (await inbox.next()).dead_letter("runs_on label retired")
    buried = await dead.next()
    assert buried.headers[REASON_HEADER] == "runs_on label retired"
    assert str(buried.headers[SOURCE_HEADER]).endswith(".jobs.dl")
    assert decode(buried.body, JobRequest) == request
    await buried.ack()


async def test_poison_message_is_dead_lettered_and_consumer_goes_on(
        broker: Broker, publish_raw: RawPublish, caplog: pytest.LogCaptureFixture) -> None:
    """A handler that decodes raises MessageError on garbage; the consumer keeps working."""
    good: asyncio.Queue[JobRequest] = asyncio.Queue()

    async def handler(delivery: Delivery) -> None:
        await good.put(decode(delivery.body, JobRequest))
        await delivery.ack()

    dead = Inbox()
    await broker.consume_dead_letters(dead)
    await broker.consume_jobs("poison", handler, prefetch=2)
    future = encode(job_request("poison")).replace(b'"schema_version":1', b'"schema_version":99')
    await broker.publish_job(job_request("poison", key="before"))
    await publish_raw("poison", future)
    await publish_raw("poison", b"\x00not json")
    await broker.publish_job(job_request("poison", key="after"))
    keys = {(await asyncio.wait_for(good.get(), WAIT)).job_key for _ in range(2)}
    assert keys == {"before", "after"}
    reasons = set()
    for _ in range(2):
        buried = await dead.next()
        reasons.add(str(buried.headers[REASON_HEADER]))
        await buried.ack()
    assert any("unsupported schema_version" in r for r in reasons)
    assert any("malformed JobRequest" in r for r in reasons)
    logged = [r for r in caplog.records if r.getMessage() == "message dead-lettered"]
    assert len(logged) == 2, "each poison message is logged exactly once"


async def test_events_route_by_pattern(broker: Broker) -> None:
    everything, successes = Inbox(), Inbox()
    await broker.consume_events("all", everything, routing_keys=("job.#",))
    await broker.consume_events("ok", successes, routing_keys=("job.success",))
    await broker.publish_event(job_event(JobState.FAILURE))
    await broker.publish_event(job_event(JobState.SUCCESS))
    states = []
    for _ in range(2):
        delivery = await everything.next()
        states.append(decode(delivery.body, JobEvent).state)
        await delivery.ack()
    assert states == [JobState.FAILURE, JobState.SUCCESS]
    only = await successes.next()
    assert only.routing_key == "job.success"
    assert decode(only.body, JobEvent).state is JobState.SUCCESS
    await only.ack()
    assert await successes.nothing_within(0.3)


async def test_event_nobody_listens_for_is_not_an_error(broker: Broker) -> None:
    await broker.publish_event(job_event(JobState.CANCELLED))


async def test_logs_fan_out_to_every_watcher(broker: Broker) -> None:
    every: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    one: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def watch_all(job_id: str, data: bytes) -> None:
        await every.put((job_id, data))

    async def watch_one(job_id: str, data: bytes) -> None:
        await one.put((job_id, data))

    await broker.consume_logs(watch_all)
    await broker.consume_logs(watch_one, job_id="job-a")
    lines = [("job-a", b"line 1\n"), ("job-b", b"other\n"), ("job-a", b"line 2\n")]
    for job_id, data in lines:
        await broker.publish_log(job_id, data)
    got_all = [await asyncio.wait_for(every.get(), WAIT) for _ in range(3)]
    got_one = [await asyncio.wait_for(one.get(), WAIT) for _ in range(2)]
    assert got_all == lines
    assert got_one == [lines[0], lines[2]]


async def test_cancelled_subscription_stops_deliveries(broker: Broker) -> None:
    inbox = Inbox()
    subscription = await broker.consume_jobs("cancel", inbox, prefetch=4)
    await broker.publish_job(job_request("cancel", key="one"))
    held = await inbox.next()
    await subscription.cancel()
    await broker.publish_job(job_request("cancel", key="two"))
    assert await inbox.nothing_within(0.3)
    await held.ack()
    later = Inbox()
    await broker.consume_jobs("cancel", later, prefetch=4)
    assert decode((await later.next()).body, JobRequest).job_key == "two"


async def test_close_returns_unsettled_and_refuses_publish(make_broker: Callable[[], Broker]) -> None:
    request = job_request("close")
    async with make_broker() as broker:
        inbox = Inbox()
        await broker.consume_jobs("close", inbox, prefetch=1)
        await broker.publish_job(request)
        await inbox.next()
    with pytest.raises(BrokerError):
        await broker.publish_job(job_request("close"))
    async with make_broker() as again:
        inbox = Inbox()
        await again.consume_jobs("close", inbox, prefetch=1)
        delivery = await inbox.next()
        assert delivery.redelivered is True
        assert decode(delivery.body, JobRequest) == request
        await delivery.ack()


async def test_handler_crash_requeues_the_message(broker: Broker) -> None:
    seen: asyncio.Queue[bool] = asyncio.Queue()

    async def flaky(delivery: Delivery) -> None:
        await seen.put(delivery.redelivered)
        if not delivery.redelivered:
            raise RuntimeError("database restarting")
        await delivery.ack()

    await broker.consume_jobs("flaky", flaky, prefetch=1)
    await broker.publish_job(job_request("flaky"))
    assert [await asyncio.wait_for(seen.get(), WAIT) for _ in range(2)] == [False, True]
