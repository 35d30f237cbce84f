"""The RabbitMQ broker of multi-host mode, on aio-pika.

Topology (declared idempotently by whoever connects first, all names from the prefix):
- `<prefix>.runs` and `<prefix>.jobs.<label>`: durable *classic* queues with
  `x-max-priority` = `MAX_PRIORITY`, published through the default exchange. Why not quorum
  queues: this deployment's RabbitMQ (3.10/3.x) ignores priorities on quorum queues, and
  RabbitMQ 4 gives them only two weighted levels; two separate high/normal queues cannot be
  consumed strictly high-first under one prefetch limit (the broker serves whichever queue
  has a ready message) without polling with basic.get, which costs dispatch latency. A
  durable classic queue with persistent messages and publisher confirms loses nothing across
  broker restarts on a node; what it gives up is replication inside a RabbitMQ cluster.
- `<prefix>.events`: durable topic exchange; each consumer names a durable quorum queue
  `<prefix>.events.<name>` bound with patterns such as `job.#`.
- `<prefix>.logs`: transient topic exchange (routing key = job id); watchers get exclusive
  auto-delete queues and no acks.
- `<prefix>.dlx` (durable fanout) into `<prefix>.dead` (durable quorum queue); every work
  queue names it as `x-dead-letter-exchange` so nothing the broker itself drops is lost.

Publishing: one channel with publisher confirms and `on_return_raises`; messages are
persistent and `mandatory`. A publish returns once RabbitMQ confirmed it; a nack or an
unroutable message raises `BrokerError`. While the connection is down (broker restart),
`connect_robust` reconnects in the background and restores channels, queues, bindings and
consumers; a publish meanwhile retries with backoff for up to `publish_timeout` seconds.
A confirm lost with the connection makes the retry publish twice: consumers dedupe on the
request id / job lease, so at-least-once never becomes twice-run.

Consuming: one channel per subscription with `basic.qos(prefetch)`. Handlers run in tasks
of this broker, not of the channel, so a broker restart does not cancel a running handler;
its delivery is then orphaned (settling it is a no-op) and RabbitMQ redelivers the message
with `redelivered=True`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    AMQPChannelError,
    ChannelInvalidStateError,
    DeliveryError,
    MessageProcessError,
    ProbableAuthenticationError,
    PublishError,
)
from yarl import URL

from common.broker.base import (
    MAX_PRIORITY,
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
from common.retry import Backoff, retry_async
from common.tracing import message_headers

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures during which a publish is retried: the connection or channel is being restored.
TRANSIENT = (ConnectionError, ChannelInvalidStateError, AMQPChannelError, asyncio.TimeoutError)
# How long cancelling a consumer may wait for a broker that is down.
CANCEL_TIMEOUT = 5.0
# Same bound per live-log watcher as the in-process broker.
LOG_BUFFER = 10_000


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


class _AmqpDelivery(Delivery):
    def __init__(self, broker: AmqpBroker, queue: str, message: AbstractIncomingMessage,
                 done: Callable[[_AmqpDelivery], None]) -> None:
        self.body = message.body
        self.redelivered = bool(message.redelivered)
        self.headers = dict(message.headers or {})
        self.routing_key = message.routing_key or ""
        self.queue = queue
        self.priority = message.priority or 0
        self._broker = broker
        self._message = message
        self._done = done
        self.orphaned = False

    async def _settle_on_channel(self, action: Callable[[], Awaitable[None]]) -> None:
        try:
            if not self.orphaned:
                await action()
        except (ChannelInvalidStateError, MessageProcessError, ConnectionError, AMQPChannelError):
            # The channel it came on is gone; RabbitMQ already took the message back.
            log.info("delivery outlived its channel; the broker redelivers it",
                     extra={"queue": self.queue})
        finally:
            self._done(self)

    async def _ack(self) -> None:
        await self._settle_on_channel(self._message.ack)

    async def _requeue(self) -> None:
        await self._settle_on_channel(lambda: self._message.nack(requeue=True))

    async def _dead_letter(self, reason: str) -> None:
        if not self.orphaned:
            headers = {**self.headers, REASON_HEADER: reason, SOURCE_HEADER: self.queue}
            await self._broker._publish(self._broker._dlx_name, self.routing_key,
                                        self.body, headers=headers, priority=self.priority)
        await self._settle_on_channel(self._message.ack)


class AmqpBroker(Broker):
    """RabbitMQ through one robust connection. Construct with the URL, then `async with`."""

    def __init__(self, url: str, prefix: str = "solstice", *, publish_timeout: float = 30.0,
                 reconnect_interval: float = 1.0, connect_attempts: int | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.publish_timeout = publish_timeout
        self.reconnect_interval = reconnect_interval
        self.connect_attempts = connect_attempts
        self._dlx_name = f"{prefix}.dlx"
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._job_queues: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsettled: set[_AmqpDelivery] = set()
        self._subscriptions: list[Subscription] = []
        self.declared_queues: set[str] = set()
        self.declared_exchanges: set[str] = set()

    # -- connection and topology -------------------------------------------------------

    async def connect(self) -> None:
        try:
            self._connection = await retry_async(
                self._open, retry_on=(ConnectionError, OSError), attempts=self.connect_attempts,
                backoff=Backoff(initial=0.2, maximum=5.0), describe=f"connect to {redact(self.url)}")
        except ProbableAuthenticationError as exc:
            raise BrokerError(f"RabbitMQ at {redact(self.url)} refused the credentials",
                              hint="check the user and password in the AMQP URL") from exc
        except (ConnectionError, OSError) as exc:
            raise BrokerError(f"cannot reach RabbitMQ at {redact(self.url)}: {exc}",
                              hint="is the broker running, and is the URL right?") from exc
        self._publisher = await self._connection.channel(publisher_confirms=True,
                                                         on_return_raises=True)
        await self._declare_topology(self._publisher)

    async def _open(self) -> AbstractRobustConnection:
        try:
            return await aio_pika.connect_robust(
                self.url, reconnect_interval=self.reconnect_interval,
                client_properties={"connection_name": f"solstice {self.prefix}"})
        except ProbableAuthenticationError:
            raise
        except Exception as exc:
            # aiormq reports an unreachable host as several exception types; normalise them
            # so the retry loop sees one kind.
            if isinstance(exc, (ConnectionError, OSError)):
                raise
            raise ConnectionError(str(exc)) from exc

    async def _declare_topology(self, channel: AbstractChannel) -> None:
        p = self.prefix
        self._exchanges["events"] = await self._exchange(
            channel, f"{p}.events", aio_pika.ExchangeType.TOPIC, durable=True)
        self._exchanges["logs"] = await self._exchange(
            channel, f"{p}.logs", aio_pika.ExchangeType.TOPIC, durable=False)
        self._exchanges["dlx"] = await self._exchange(
            channel, self._dlx_name, aio_pika.ExchangeType.FANOUT, durable=True)
        dead = await self._queue(channel, f"{p}.dead", quorum=True, dead_letter=False)
        await dead.bind(self._exchanges["dlx"], routing_key="#")
        await self._queue(channel, f"{p}.runs")

    async def _exchange(self, channel: AbstractChannel, name: str,
                        kind: aio_pika.ExchangeType, *, durable: bool) -> AbstractExchange:
        exchange = await channel.declare_exchange(name, kind, durable=durable)
        self.declared_exchanges.add(name)
        return exchange

    async def _queue(self, channel: AbstractChannel, name: str, *, quorum: bool = False,
                     dead_letter: bool = True) -> AbstractQueue:
        """Declare a durable work queue: quorum, or classic with priorities (see module doc)."""
        arguments: dict[str, Any] = (
            {"x-queue-type": "quorum"} if quorum
            else {"x-queue-type": "classic", "x-max-priority": MAX_PRIORITY})
        if dead_letter:
            arguments["x-dead-letter-exchange"] = self._dlx_name
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        self.declared_queues.add(name)
        return queue

    async def close(self) -> None:
        await asyncio.gather(*(s.cancel() for s in list(self._subscriptions)))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for delivery in list(self._unsettled):
            delivery.orphaned = True
        self._unsettled.clear()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected.is_set()

    def _channel(self) -> AbstractChannel:
        if self._publisher is None or self._connection is None:
            raise BrokerError("the RabbitMQ broker is closed",
                              hint="publish only between connect() and close()")
        return self._publisher

    # -- publishing ----------------------------------------------------------------------

    async def _publish(self, exchange: str, routing_key: str, body: bytes, *,
                       priority: int = 0, headers: dict[str, Any] | None = None,
                       mandatory: bool = True) -> None:
        channel = self._channel()
        message = aio_pika.Message(body, content_type="application/json",
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   priority=clamp_priority(priority),
                                   headers=message_headers(headers))

        async def attempt() -> None:
            target = (channel.default_exchange if exchange == ""
                      else await channel.get_exchange(exchange, ensure=False))
            await target.publish(message, routing_key, mandatory=mandatory,
                                 timeout=self.publish_timeout)

        where = f"{exchange or '(default)'}/{routing_key}"
        try:
            async with asyncio.timeout(self.publish_timeout):
                await retry_async(attempt, retry_on=TRANSIENT,
                                  backoff=Backoff(initial=0.1, maximum=1.0),
                                  describe=f"publish to {where}")
        except PublishError as exc:
            raise BrokerError(f"RabbitMQ could not route a message to {where}",
                              hint="the queue was deleted; restart the orchestrator to "
                                   "declare the topology again") from exc
        except DeliveryError as exc:
            raise BrokerError(f"RabbitMQ refused a message for {where} (nack)",
                              hint="check the broker's log and its memory/disk alarms") from exc
        except TimeoutError as exc:
            raise BrokerError(f"RabbitMQ at {redact(self.url)} did not confirm a message for "
                              f"{where} within {self.publish_timeout:.0f}s",
                              hint="is the broker up? nothing was lost: the caller still "
                                   "holds the message and may retry") from exc

    async def publish_run(self, request: RunRequest | RunApproval) -> None:
        await self._publish("", f"{self.prefix}.runs", encode(request), priority=request.priority)

    async def publish_job(self, request: JobRequest) -> None:
        name = f"{self.prefix}.jobs.{request.runs_on}"
        if name not in self._job_queues:
            # Declared by the publisher so a job for a label no host serves yet waits for one.
            channel = self._channel()
            try:
                async with asyncio.timeout(self.publish_timeout):
                    await retry_async(lambda: self._queue(channel, name), retry_on=TRANSIENT,
                                      backoff=Backoff(initial=0.1, maximum=1.0),
                                      describe=f"declare {name}")
            except TimeoutError as exc:
                raise BrokerError(f"RabbitMQ at {redact(self.url)} did not declare {name} "
                                  f"within {self.publish_timeout:.0f}s",
                                  hint="is the broker up? nothing was lost: the caller still "
                                       "holds the message and may retry") from exc
            self._job_queues.add(name)
        await self._publish("", name, encode(request), priority=request.priority)

    async def publish_event(self, event: JobEvent) -> None:
        await self._publish(f"{self.prefix}.events", event.routing_key, encode(event),
                            mandatory=False)

    async def publish_log(self, job_id: str, data: bytes) -> None:
        self._channel()
        try:
            # Transient and unconfirmed on purpose: a live view tolerates a gap, the stored
            # log (Postgres) is the record.
            await self._exchanges["logs"].publish(
                aio_pika.Message(data, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                job_id, mandatory=False, timeout=self.publish_timeout)
        except TRANSIENT:
            log.debug("live log line dropped while reconnecting", extra={"job_id": job_id})

    # -- consuming -----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _consume(self, name: str, handler: Handler, prefetch: int,
                       declare: Callable[[AbstractChannel], Awaitable[AbstractQueue]]) -> Subscription:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")

        async def open_channel(channel: AbstractChannel) -> AbstractQueue:
            await channel.set_qos(prefetch_count=prefetch)
            return await declare(channel)

        channel, queue = await self._open_channel(name, open_channel)
        outstanding: set[_AmqpDelivery] = set()
        drained = asyncio.Event()
        drained.set()

        def done(delivery: _AmqpDelivery) -> None:
            outstanding.discard(delivery)
            self._unsettled.discard(delivery)
            if not outstanding:
                drained.set()

        async def on_message(message: AbstractIncomingMessage) -> None:
            delivery = _AmqpDelivery(self, name, message, done)
            outstanding.add(delivery)
            self._unsettled.add(delivery)
            drained.clear()
            self._spawn(run_handler(handler, delivery))

        tag = await self._until_connected(f"consume {name}", lambda: queue.consume(
            on_message, no_ack=False))

        async def cancel() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                try:
                    await asyncio.wait_for(queue.cancel(tag), CANCEL_TIMEOUT)
                except TRANSIENT:
                    # The connection is down (a drain must not wait for it): its deliveries
                    # are void already, and closing the channel keeps the robust connection
                    # from restoring this consumer.
                    await channel.close()
                    return
                # Deliveries handed out stay settleable on this channel; close it after them.
                self._spawn(self._close_when_drained(channel, drained))

        subscription = Subscription(cancel)
        self._subscriptions.append(subscription)
        return subscription

    async def _until_connected(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`, waiting out a broker restart (consumers have nothing better to do)."""
        while True:
            if self._connection is None:
                raise BrokerError("the RabbitMQ broker is closed", hint="call connect() first")
            try:
                await self._connection.ready()
                return await operation()
            except (*TRANSIENT, RuntimeError) as exc:
                # RuntimeError: aio-pika's "Connection was not opened" between reconnects.
                log.warning("broker unavailable; retrying", extra={"operation": what,
                                                                 "error": repr(exc)})
                await asyncio.sleep(self.reconnect_interval)

    async def _open_channel(self, name: str,
                            setup: Callable[[AbstractChannel], Awaitable[AbstractQueue]]
                            ) -> tuple[AbstractChannel, AbstractQueue]:
        """A new channel with its queue declared, once the connection is up."""

        async def attempt() -> tuple[AbstractChannel, AbstractQueue]:
            assert self._connection is not None
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                return channel, await setup(channel)
            except BaseException:
                if not channel.is_closed:
                    await asyncio.shield(channel.close())
                raise

        return await self._until_connected(f"open a channel for {name}", attempt)

    async def _close_when_drained(self, channel: AbstractChannel, drained: asyncio.Event) -> None:
        try:
            await drained.wait()
        finally:
            if not channel.is_closed:
                # Shielded: `close()` cancels this task, and a Channel.Close cut short leaves
                # aiormq closing the whole connection with an error.
                await asyncio.shield(channel.close())

    async def consume_runs(self, handler: Handler, *, prefetch: int = 8) -> Subscription:
        name = f"{self.prefix}.runs"
        return await self._consume(name, handler, prefetch, lambda ch: self._queue(ch, name))

    async def consume_jobs(self, label: str, handler: Handler, *, prefetch: int) -> Subscription:
        name = f"{self.prefix}.jobs.{label}"
        return await self._consume(name, handler, prefetch, lambda ch: self._queue(ch, name))

    async def consume_events(self, queue: str, handler: Handler,
                             *, routing_keys: tuple[str, ...] = ("job.#",)) -> Subscription:
        name = f"{self.prefix}.events.{queue}"

        async def declare(channel: AbstractChannel) -> AbstractQueue:
            declared = await self._queue(channel, name, quorum=True)
            for pattern in routing_keys:
                await declared.bind(f"{self.prefix}.events", routing_key=pattern)
            return declared

        return await self._consume(name, handler, 16, declare)

    async def consume_dead_letters(self, handler: Handler) -> Subscription:
        name = f"{self.prefix}.dead"
        return await self._consume(name, handler, 16,
                                   lambda ch: self._queue(ch, name, quorum=True, dead_letter=False))

    async def consume_logs(self, handler: LogHandler, *, job_id: str | None = None) -> Subscription:
        async def declare(channel: AbstractChannel) -> AbstractQueue:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(f"{self.prefix}.logs", routing_key=job_id or "#")
            return queue

        channel, queue = await self._open_channel(f"live logs of {job_id or 'all jobs'}", declare)
        buffer: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(LOG_BUFFER)

        async def on_message(message: AbstractIncomingMessage) -> None:
            if not buffer.full():
                buffer.put_nowait((message.routing_key or "", message.body))

        async def pump() -> None:
            # One task per watcher keeps its lines in order (aiormq runs a task per delivery).
            while True:
                key, data = await buffer.get()
                try:
                    await handler(key, data)
                except Exception:
                    log.exception("live log handler failed", extra={"job_id": key})

        task = self._spawn(pump())
        await self._until_connected("consume live logs",
                                    lambda: queue.consume(on_message, no_ack=True))

        async def cancel() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                task.cancel()
                if not channel.is_closed:
                    await channel.close()

        subscription = Subscription(cancel)
        self._subscriptions.append(subscription)
        return subscription
