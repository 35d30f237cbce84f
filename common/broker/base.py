"""The small interface every broker implements."""
from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry.trace import SpanKind

from common.errors import SolsticeError
from common.messages import JobEvent, JobRequest, MessageError, RunApproval, RunRequest
from common.observability import tracer
from common.tracing import SENT_AT_HEADER, TRACEPARENT, context_from

REASON_HEADER = "x-solstice-reason"
# The queue a dead-lettered message came from.
SOURCE_HEADER = "x-solstice-queue"
# Message priorities are clamped to 0..MAX_PRIORITY by every implementation.
MAX_PRIORITY = 9
# A handler that fails for an unexpected reason holds its delivery this long before it is
# requeued, so a message that always fails cannot spin a core.
REQUEUE_DELAY = 0.5

log = logging.getLogger(__name__)
_tracer = tracer(__name__)


class BrokerError(SolsticeError):
    """The broker refused or lost a publish (nacked, unroutable, closed connection)."""


def clamp_priority(priority: int) -> int:
    return max(0, min(MAX_PRIORITY, priority))


class Delivery(abc.ABC):
    """One message handed to a consumer. Exactly one of ack / requeue / dead_letter is called.

    A second settle raises `RuntimeError`. A delivery may be settled after its handler
    returned (e.g. a job acks once it is leased). If the connection it came on was lost
    before it was settled, settling is a no-op: the broker redelivers the message with
    `redelivered=True`, so consumers must be idempotent on the message's request id.
    """

    body: bytes
    redelivered: bool
    headers: dict[str, object]
    routing_key: str = ""
    queue: str = ""  # the queue it was consumed from

    _settled: bool = False

    @property
    def settled(self) -> bool:
        return self._settled

    def _settle(self, action: str) -> None:
        if self._settled:
            raise RuntimeError(f"delivery already settled; cannot {action} it again")
        self._settled = True

    async def ack(self) -> None:
        """The message is done with; the broker forgets it."""
        self._settle("ack")
        await self._ack()

    async def requeue(self) -> None:
        """Give the message back to the queue (e.g. on drain, or a transient failure).

        It is delivered again, to any consumer, with `redelivered=True`.
        """
        self._settle("requeue")
        await self._requeue()

    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter queue with `reason` in a header; logged once."""
        self._settle("dead-letter")
        log.warning("message dead-lettered", extra={"queue": self.queue, "reason": reason})
        await self._dead_letter(reason)

    @abc.abstractmethod
    async def _ack(self) -> None: ...

    @abc.abstractmethod
    async def _requeue(self) -> None: ...

    @abc.abstractmethod
    async def _dead_letter(self, reason: str) -> None: ...


Handler = Callable[[Delivery], Awaitable[None]]
# Live log lines: called with the job id (the routing key) and the bytes published.
LogHandler = Callable[[str, bytes], Awaitable[None]]


def _sent_at(delivery: Delivery) -> int | None:
    value = delivery.headers.get(SENT_AT_HEADER)
    return value if isinstance(value, int) and value > 0 else None


async def run_handler(handler: Handler, delivery: Delivery) -> None:
    """Call `handler`; settle the delivery if an exception escapes before the handler did.

    The handler runs in a consumer span under the publisher's trace context (from the
    message headers, `common.tracing`), after a `broker.queue_wait` span covering the time
    the message waited in its queue.

    `MessageError` (malformed or unknown-version body) dead-letters the message with the
    error as reason; any other exception is logged and the message requeued after
    `REQUEUE_DELAY` (transient faults such as a database restart must lose nothing).
    """
    parent = context_from(delivery.headers.get(TRACEPARENT))
    attributes = {"messaging.destination.name": delivery.queue,
                  "messaging.rabbitmq.routing_key": delivery.routing_key}
    if (sent_at := _sent_at(delivery)) is not None:
        _tracer.start_span("broker.queue_wait", context=parent, start_time=sent_at,
                           kind=SpanKind.CONSUMER, attributes=attributes).end()
    with _tracer.start_as_current_span("broker.deliver", context=parent, kind=SpanKind.CONSUMER,
                                       attributes=attributes):
        await _settled_on_error(handler, delivery)


async def _settled_on_error(handler: Handler, delivery: Delivery) -> None:
    try:
        await handler(delivery)
    except MessageError as exc:
        if not delivery.settled:
            await delivery.dead_letter(exc.message)
    except asyncio.CancelledError:
        if not delivery.settled:
            await asyncio.shield(delivery.requeue())
        raise
    except Exception:
        log.exception("message handler failed; requeueing the message",
                      extra={"routing_key": delivery.routing_key})
        if not delivery.settled:
            await asyncio.sleep(REQUEUE_DELAY)
            await delivery.requeue()


@dataclass
class Subscription:
    """A running consumer; `cancel` stops new deliveries (used by graceful drain).

    Deliveries already handed out stay valid after `cancel` and must still be settled.
    """

    cancel: Callable[[], Awaitable[None]] = field(repr=False)


class Broker(abc.ABC):
    """Publish and consume Solstice messages. Use as `async with`.

    Runs and job requests are consumed highest `priority` first (clamped to
    0..`MAX_PRIORITY`), in publish order within a priority.
    """

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and declare the topology idempotently."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every consumer; unsettled deliveries go back to their queues."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Connected now (False while closed or reconnecting): for readiness checks."""

    @abc.abstractmethod
    async def publish_run(self, request: RunRequest | RunApproval) -> None:
        """Returns once the broker holds the message durably; raises `BrokerError` if not."""

    @abc.abstractmethod
    async def publish_job(self, request: JobRequest) -> None:
        """Route to the queue of `request.runs_on` (declared if new, so it waits for a host)."""

    @abc.abstractmethod
    async def publish_event(self, event: JobEvent) -> None:
        """Confirmed like the others; an event no queue is bound for is dropped, not an error."""

    @abc.abstractmethod
    async def publish_log(self, job_id: str, data: bytes) -> None:
        """Live log fan-out; transient, unconfirmed, may drop when nobody listens."""

    @abc.abstractmethod
    async def consume_runs(self, handler: Handler, *, prefetch: int = 8) -> Subscription: ...

    @abc.abstractmethod
    async def consume_jobs(self, label: str, handler: Handler, *, prefetch: int) -> Subscription:
        """Consume job requests for one `runs_on` label; at most `prefetch` unacked at once."""

    @abc.abstractmethod
    async def consume_events(self, queue: str, handler: Handler,
                             *, routing_keys: tuple[str, ...] = ("job.#",)) -> Subscription:
        """Consume job events through a durable queue named `queue` bound to the events exchange.

        `routing_keys` are topic patterns (`*` one word, `#` zero or more); bindings add up
        across calls, as AMQP bindings do.
        """

    @abc.abstractmethod
    async def consume_logs(self, handler: LogHandler, *, job_id: str | None = None) -> Subscription:
        """Live log lines of one job (or of every job); only lines published after this call."""

    @abc.abstractmethod
    async def consume_dead_letters(self, handler: Handler) -> Subscription: ...
