"""Supervision of a service's long-lived tasks: one that ends unexpectedly ends the service.

A task loop that dies on an unexpected exception leaves a process that runs and looks healthy
while a part of it stopped for good (a label that takes no more jobs, statuses that stop).
Every service starts its tasks through one `Supervisor` and waits on it:

    supervisor = Supervisor()
    supervisor.spawn("outbox-relay", relay.run())
    await supervisor.wait()   # returns after stop() (a signal), raises TaskFailed on a failure

A task failing (or a long-lived one returning) while the service runs is logged once with its
traceback; `wait()` then raises `TaskFailed`, the service shuts down and exits non-zero, and
systemd / SMF restart it. Tasks ending after `stop()` (the orderly shutdown cancelling or
ending them) are expected; an exception is still logged.

`wait_event` is the cancel-safe way to wait for an event with a timeout: on Python 3.11,
`asyncio.wait_for(event.wait(), t)` returns normally when a cancel arrives just as the event
fires (CPython gh-86296), so a loop built on it can survive its own cancellation for ever.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from common.errors import SolsticeError

log = logging.getLogger(__name__)


class TaskFailed(SolsticeError):
    """A supervised task ended while the service was running (the cause is chained)."""


class NotReady(SolsticeError):
    """A readiness check failed: the service is stopping or a part of it failed."""


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True once `event` is set, False after `timeout` seconds; a cancel always propagates."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Supervisor:
    """The long-lived tasks of one service; see the module docstring."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], bool] = {}
        self._stopping = False
        self._failure: TaskFailed | None = None
        self._changed = asyncio.Event()

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], *,
              finite: bool = False) -> asyncio.Task[Any]:
        """Run `coro` as task `name`. A long-lived task must not end before `stop()`; with
        `finite` (a job, a one-off), returning is expected and only an exception is a failure.
        Cancelling the returned task (an owner stopping its part) is never a failure."""
        task = asyncio.create_task(coro, name=name)
        self._tasks[task] = finite
        task.add_done_callback(self._ended)
        return task

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def failure(self) -> TaskFailed | None:
        """The first unexpected task end, if any."""
        return self._failure

    def stop(self) -> None:
        """Ask the service to stop (a signal handler): `wait()` returns, task ends are expected."""
        self._stopping = True
        self._changed.set()

    async def wait(self) -> None:
        """Return once `stop()` was called; raise `TaskFailed` if a task failed first."""
        await self._changed.wait()
        if self._failure is not None:
            raise self._failure

    async def ready(self) -> None:
        """Readiness check: raises `NotReady` once a task failed or the service is stopping."""
        if self._failure is not None:
            raise NotReady(self._failure.message)
        if self._stopping:
            raise NotReady("the service is stopping")

    async def close(self) -> None:
        """Stop, cancel the tasks still running and wait for them."""
        self.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ended(self, task: asyncio.Task[Any]) -> None:
        finite = self._tasks.pop(task)
        if task.cancelled():
            return
        name = task.get_name()
        exc = task.exception()
        if exc is None:
            if finite or self._stopping:
                return
            log.error("task ended while the service was running; stopping",
                      extra={"task": name})
            failure = TaskFailed(f"task {name} ended while the service was running",
                                 hint="this is a bug in Solstice; the service exits so that "
                                      "its supervisor (systemd, SMF) restarts it")
        else:
            # The one place the traceback is logged; whoever gets TaskFailed only says why.
            log.error("task failed%s", "" if self._stopping else "; stopping",
                      exc_info=exc, extra={"task": name})
            failure = TaskFailed(f"task {name} failed: {type(exc).__name__}: {exc}",
                                 hint="see the traceback logged with it; the service exits "
                                      "so that its supervisor (systemd, SMF) restarts it")
            failure.__cause__ = exc
        if self._failure is None and not self._stopping:
            self._failure = failure
            self._changed.set()
