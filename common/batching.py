"""Group commit: concurrent calls that arrive while one write is in flight share the next one.

Under load, a service answering many small requests spends more on round trips (a send and a
receive each, expensive system calls here) and on PostgreSQL commits (a WAL flush each) than
on the writes themselves. `Coalescer` queues each call's item; while no flush runs, one
starts at once with everything queued (so a lone call waits for nothing), and the calls that
arrive meanwhile go out together in the flush after it. Each caller gets its own item's
result, or the flush's exception.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class Coalescer(Generic[T, R]):
    """Calls `flush(items)` (one result per item, in order) for the items queued by
    concurrent `submit` calls, at most `max_batch` at a time."""

    def __init__(self, flush: Flush[T, R], *, max_batch: int = 256) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue `item` for the next flush and return its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._flusher is None:
            # Not supervised: it ends when the queue is empty, and every failure reaches the
            # callers through their futures.
            self._flusher = asyncio.create_task(self._drain(), name="coalescer-flush")
        return await future

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch = self._queued[:self._max_batch]
                del self._queued[:self._max_batch]
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its caller may have been cancelled meanwhile
                        future.set_result(result)
        finally:
            self._flusher = None
            for _, future in self._queued:  # cancelled with calls still queued
                future.cancel()
            self._queued.clear()
