"""The loop both forge workers share (the status outbox's and the webhook inbox's): claim
what is due in rounds and handle each claimed item concurrently; wake on `notify()` or every
`poll_interval` seconds; survive database restarts.
"""
from __future__ import annotations

import abc
import asyncio
from typing import Generic, TypeVar

from common.postgres import TRANSIENT_ERRORS
from common.retry import Backoff, retry_async
from common.supervise import wait_event

T = TypeVar("T")
# Between tries to reach a database that went away.
RECONNECT = Backoff(initial=0.5, maximum=10.0)


class ClaimWorker(abc.ABC, Generic[T]):
    """Runs `claim` / `handle` rounds until nothing is due, then waits (module docstring)."""

    def __init__(self, *, poll_interval: float, describe: str) -> None:
        self._poll_interval = poll_interval
        self._describe = describe
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Something was stored: look now rather than at the next poll."""
        self._wake.set()

    @abc.abstractmethod
    async def claim(self) -> list[T]:
        """Lease the items due now (an empty list ends the round)."""

    @abc.abstractmethod
    async def handle(self, item: T) -> None:
        """Handle one claimed item, recording its outcome."""

    async def run_once(self) -> int:
        """Handle every item due now, in rounds; return how many were tried."""
        tried = 0
        while True:
            items = await self.claim()
            if not items:
                return tried
            await asyncio.gather(*(self.handle(item) for item in items))
            tried += len(items)

    async def run(self) -> None:
        """Work forever; survives database restarts (retried with backoff)."""
        while True:
            self._wake.clear()
            await retry_async(self.run_once, retry_on=TRANSIENT_ERRORS, backoff=RECONNECT,
                              describe=self._describe)
            await wait_event(self._wake, self._poll_interval)
