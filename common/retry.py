"""The one retry helper: exponential backoff with full jitter, for async operations."""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delays of `initial * factor**n`, capped at `maximum`, with full jitter."""

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.maximum, self.initial * self.factor**attempt))


def raise_if_cancelling(error: BaseException) -> None:
    """Raise `CancelledError` (from `error`) if the current task is being cancelled.

    Cleanup that runs on a cancel (a dying connection's UNLISTEN, a pool's reset on release)
    can fail, and its error then replaces the `CancelledError`: a loop that catches that error
    to retry would go on for ever and keep its service from stopping."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int | None = None,
    backoff: Backoff = Backoff(),
    describe: str = "operation",
) -> T:
    """Run `operation` until it succeeds, retrying on `retry_on` with backoff.

    `attempts=None` retries forever (for reconnect loops; cancel the task to stop).
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except retry_on as exc:
            raise_if_cancelling(exc)
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            delay = backoff.delay(attempt)
            log.warning("%s failed (attempt %d): %s; retrying in %.2fs", describe, attempt, exc, delay)
            await asyncio.sleep(delay)
