"""The one retry helper: a cancel whose cleanup fails with a retryable error still ends it."""
from __future__ import annotations

import asyncio

import pytest

from common.retry import Backoff, retry_async


async def test_a_cancel_replaced_by_a_retryable_error_ends_the_retries() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError as cancel:
            # What a pool's reset of a connection that just died does on the way out.
            raise ConnectionResetError("connection was closed in the middle of operation") from cancel

    task = asyncio.create_task(retry_async(operation, retry_on=(ConnectionResetError,),
                                           backoff=Backoff(initial=0.01, maximum=0.01)))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done, "the retries went on after the cancel"
    assert task.cancelled() and calls == 1


async def test_retryable_errors_are_retried_without_a_cancel() -> None:
    failures = [ConnectionResetError("reset"), ConnectionResetError("reset")]

    async def operation() -> str:
        if failures:
            raise failures.pop()
        return "done"

    assert await retry_async(operation, retry_on=(ConnectionResetError,),
                             backoff=Backoff(initial=0.001, maximum=0.001)) == "done"
    with pytest.raises(ConnectionResetError):
        failures.extend([ConnectionResetError("reset")] * 3)
        await retry_async(operation, retry_on=(ConnectionResetError,), attempts=2,
                          backoff=Backoff(initial=0.001, maximum=0.001))
