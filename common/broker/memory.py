"""The in-process broker of standalone mode: asyncio queues with RabbitMQ's semantics.

Same topology and contract as `common.broker.amqp` (see the package docstring), so the code
above the interface cannot tell them apart: priority queues for runs and per-label jobs,
prefetch as the bound on unsettled deliveries per consumer, topic routing of events into
named queues, transient log fan-out, and a dead-letter queue. Nothing survives the process;
standalone mode relies on Postgres (leases, outbox) to re-publish what a restart dropped.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from common.broker.base import (
    REASON_HEADER,
    SOURCE_HEADER,
    Broker,
    BrokerError,
    Delivery,
    Handler,
    LogHandler,
    Subscription,
    clamp_priority,
    run_handler,
)
from common.messages import JobEvent, JobRequest, RunApproval, RunRequest, encode
from common.tracing import message_headers

log = logging.getLogger(__name__)

# Per live-log subscriber; beyond this the slowest watcher loses lines rather than memory.
LOG_BUFFER = 10_000


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one dot-separated word, `#` zero or more."""

    def match(words: list[str], key: list[str]) -> bool:
        if not words:
            return not key
        if words[0] == "#":
            return any(match(words[1:], key[i:]) for i in range(len(key) + 1))
        return bool(key) and words[0] in ("*", key[0]) and match(words[1:], key[1:])

    return match(pattern.split("."), routing_key.split("."))


@dataclass(order=True)
class _Message:
    sort_key: tuple[int, int]
    body: bytes = field(compare=False)
    routing_key: str = field(compare=False, default="")
    headers: dict[str, object] = field(compare=False, default_factory=dict)
    redelivered: bool = field(compare=False, default=False)


class _Queue:
    """A durable queue: highest priority first, FIFO within a priority; requeue keeps place."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: asyncio.PriorityQueue[_Message] = asyncio.PriorityQueue()
        self.bindings: set[str] = set()

    def put(self, message: _Message) -> None:
        self.items.put_nowait(message)


class _MemoryDelivery(Delivery):
    def __init__(self, broker: MemoryBroker, queue: _Queue, message: _Message,
                 release: asyncio.Semaphore) -> None:
        self.body = message.body
        self.redelivered = message.redelivered
        self.headers = dict(message.headers)
        self.routing_key = message.routing_key
        self.queue = queue.name
        self._broker = broker
        self._source = queue
        self._message = message
        self._release = release
        self._orphaned = False
        broker._unsettled.add(self)

    def _finish(self) -> bool:
        """Free the prefetch slot; False if `close` already took the message back."""
        if self._orphaned:
            return False
        self._broker._unsettled.discard(self)
        self._release.release()
        return True

    def orphan(self) -> None:
        """The broker closed: put the message back; a later settle does nothing."""
        if self._finish():
            self._orphaned = True
            self._message.redelivered = True
            self._source.put(self._message)

    async def _ack(self) -> None:
        self._finish()

    async def _requeue(self) -> None:
        if self._finish():
            self._message.redelivered = True
            self._source.put(self._message)

    async def _dead_letter(self, reason: str) -> None:
        if self._finish():
            self._broker._dead_letter(self._message, reason, self._source.name)


class MemoryBroker(Broker):
    """The standalone broker. One instance is shared by everything in the process."""

    def __init__(self, prefix: str = "solstice") -> None:
        self.prefix = prefix
        self._queues: dict[str, _Queue] = {}
        self._log_subscribers: set[tuple[str | None, asyncio.Queue[tuple[str, bytes]]]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers: set[asyncio.Task[None]] = set()
        self._unsettled: set[_MemoryDelivery] = set()
        self._sequence = itertools.count()
        self._connected = False
        self.dropped_log_lines = 0

    async def connect(self) -> None:
        self._connected = True
        self._queue(f"{self.prefix}.runs")
        self._queue(f"{self.prefix}.dead")

    @property
    def connected(self) -> bool:
        return self._connected

    async def close(self) -> None:
        self._connected = False
        tasks = list(self._consumers | self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for delivery in list(self._unsettled):
            delivery.orphan()

    def _queue(self, name: str) -> _Queue:
        if name not in self._queues:
            self._queues[name] = _Queue(name)
        return self._queues[name]

    def _check_open(self) -> None:
        if not self._connected:
            raise BrokerError("the in-process broker is closed",
                              hint="publish only between connect() and close()")

    def _message(self, body: bytes, *, priority: int = 0, routing_key: str = "",
                 headers: dict[str, object] | None = None) -> _Message:
        return _Message((-clamp_priority(priority), next(self._sequence)), body,
                        routing_key, message_headers(headers))

    def _dead_letter(self, message: _Message, reason: str, source: str) -> None:
        headers = {**message.headers, REASON_HEADER: reason, SOURCE_HEADER: source}
        self._queue(f"{self.prefix}.dead").put(
            self._message(message.body, routing_key=message.routing_key, headers=headers))

    async def publish_run(self, request: RunRequest | RunApproval) -> None:
        self._check_open()
        name = f"{self.prefix}.runs"
        self._queue(name).put(self._message(encode(request), priority=request.priority,
                                            routing_key=name))

    async def publish_job(self, request: JobRequest) -> None:
        self._check_open()
        name = f"{self.prefix}.jobs.{request.runs_on}"
        self._queue(name).put(self._message(encode(request), priority=request.priority,
                                            routing_key=name))

    async def publish_event(self, event: JobEvent) -> None:
        self._check_open()
        body = encode(event)
        for queue in self._queues.values():
            if any(topic_matches(p, event.routing_key) for p in queue.bindings):
                queue.put(self._message(body, routing_key=event.routing_key))

    async def publish_log(self, job_id: str, data: bytes) -> None:
        self._check_open()
        for wanted, buffer in self._log_subscribers:
            if wanted is not None and wanted != job_id:
                continue
            if buffer.full():
                self.dropped_log_lines += 1
                continue
            buffer.put_nowait((job_id, data))

    async def consume_runs(self, handler: Handler, *, prefetch: int = 8) -> Subscription:
        return self._consume(self._queue(f"{self.prefix}.runs"), handler, prefetch)

    async def consume_jobs(self, label: str, handler: Handler, *, prefetch: int) -> Subscription:
        return self._consume(self._queue(f"{self.prefix}.jobs.{label}"), handler, prefetch)

    async def consume_events(self, queue: str, handler: Handler,
                             *, routing_keys: tuple[str, ...] = ("job.#",)) -> Subscription:
        target = self._queue(f"{self.prefix}.events.{queue}")
        target.bindings.update(routing_keys)
        return self._consume(target, handler, prefetch=16)

    async def consume_logs(self, handler: LogHandler, *, job_id: str | None = None) -> Subscription:
        self._check_open()
        buffer: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(LOG_BUFFER)
        entry = (job_id, buffer)
        self._log_subscribers.add(entry)

        async def pump() -> None:
            while True:
                key, data = await buffer.get()
                try:
                    await handler(key, data)
                except Exception:
                    log.exception("live log handler failed", extra={"job_id": key})

        task = self._spawn(pump(), self._consumers)

        async def cancel() -> None:
            self._log_subscribers.discard(entry)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return Subscription(cancel)

    async def consume_dead_letters(self, handler: Handler) -> Subscription:
        return self._consume(self._queue(f"{self.prefix}.dead"), handler, prefetch=16)

    def _spawn(self, coro: object, into: set[asyncio.Task[None]]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        into.add(task)
        task.add_done_callback(into.discard)
        return task

    def _consume(self, queue: _Queue, handler: Handler, prefetch: int) -> Subscription:
        self._check_open()
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        slots = asyncio.Semaphore(prefetch)

        async def loop() -> None:
            while True:
                await slots.acquire()
                try:
                    message = await queue.items.get()
                except asyncio.CancelledError:
                    slots.release()
                    raise
                delivery = _MemoryDelivery(self, queue, message, slots)
                self._spawn(run_handler(handler, delivery), self._tasks)

        task = self._spawn(loop(), self._consumers)

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return Subscription(cancel)
