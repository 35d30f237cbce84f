"""The small interface every broker implements."""
from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.messages import JobEvent, JobRequest, RunRequest

REASON_HEADER = "x-solstice-reason"


class Delivery(abc.ABC):
    """One message handed to a consumer. Exactly one of ack / requeue / dead_letter is called."""

    body: bytes
    redelivered: bool
    headers: dict[str, object]

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def requeue(self) -> None:
        """Give the message back to the queue (e.g. on drain, or a transient failure)."""

    @abc.abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter queue with `reason` in a header."""


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass
class Subscription:
    """A running consumer; `cancel` stops new deliveries (used by graceful drain)."""

    cancel: Callable[[], Awaitable[None]] = field(repr=False)


class Broker(abc.ABC):
    """Publish and consume Solstice messages. Use as `async with`."""

    async def __aenter__(self) -> "Broker":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and declare the topology idempotently."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish_run(self, request: RunRequest) -> None: ...

    @abc.abstractmethod
    async def publish_job(self, request: JobRequest) -> None: ...

    @abc.abstractmethod
    async def publish_event(self, event: JobEvent) -> None: ...

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
        """Consume job events through a durable queue named `queue` bound to the events exchange."""

    @abc.abstractmethod
    async def consume_dead_letters(self, handler: Handler) -> Subscription: ...
