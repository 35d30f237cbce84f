"""`common.batching.Coalescer`: calls made while a flush is in flight share the next one."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from common.batching import Coalescer


class Recorder:
    """A flush that records its batches and can be held open or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_on: int | None = None

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_on in items:
            raise ValueError(f"refused {self.fail_on}")
        return [item * 10 for item in items]


async def test_a_lone_call_is_flushed_at_once() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.flush)
    assert await asyncio.wait_for(coalescer.submit(7), 1) == 70
    assert recorder.batches == [[7]]


async def test_calls_made_during_a_flush_share_the_next_one_and_get_their_own_result() -> None:
    recorder = Recorder()
    recorder.release.clear()
    coalescer = Coalescer(recorder.flush)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0.01)  # the flush of [1] is in flight
    rest = [asyncio.create_task(coalescer.submit(n)) for n in range(2, 12)]
    await asyncio.sleep(0.01)
    recorder.release.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [n * 10 for n in range(2, 12)]
    assert recorder.batches == [[1], list(range(2, 12))]


async def test_batches_are_capped() -> None:
    recorder = Recorder()
    recorder.release.clear()
    coalescer = Coalescer(recorder.flush, max_batch=4)
    tasks = [asyncio.create_task(coalescer.submit(n)) for n in range(10)]
    await asyncio.sleep(0.01)
    recorder.release.set()
    assert await asyncio.gather(*tasks) == [n * 10 for n in range(10)]
    assert [len(b) for b in recorder.batches] == [4, 4, 2]


async def test_a_failed_flush_fails_its_callers_only() -> None:
    recorder = Recorder()
    recorder.release.clear()
    recorder.fail_on = 3
    coalescer = Coalescer(recorder.flush, max_batch=3)
    tasks = [asyncio.create_task(coalescer.submit(n)) for n in range(1, 7)]
    await asyncio.sleep(0.01)
    recorder.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [str(r) for r in results[:3]] == ["refused 3"] * 3
    assert results[3:] == [40, 50, 60]
    assert await coalescer.submit(8) == 80  # and the next call flushes again


async def test_a_cancelled_caller_leaves_the_others_their_results() -> None:
    recorder = Recorder()
    recorder.release.clear()
    coalescer = Coalescer(recorder.flush)
    tasks = [asyncio.create_task(coalescer.submit(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    tasks[1].cancel()
    recorder.release.set()
    assert await tasks[0] == 0 and await tasks[2] == 20
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
