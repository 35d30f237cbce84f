"""Live updates inside one orchestrator process: job and step state changes, log lines, run ends.

Whatever changes state publishes here after its transaction committed; `cidev run` (and any
other in-process watcher) subscribes. Across hosts the same facts travel as JobEvents and the
broker's live-log exchange.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from common.messages import JobState


@dataclass(frozen=True)
class JobUpdate:
    run_id: uuid.UUID
    job_id: uuid.UUID
    key: str
    state: JobState
    message: str = ""


@dataclass(frozen=True)
class StepUpdate:
    run_id: uuid.UUID
    job_id: uuid.UUID
    key: str
    index: int
    name: str
    state: str  # pending, running, success, failure, skipped, cancelled, timed_out
    exit_code: int | None = None
    duration_ms: int | None = None
    ts_ms: int = 0  # when the runner saw it (Unix ms), to order it among log lines


@dataclass(frozen=True)
class LogUpdate:
    run_id: uuid.UUID
    job_id: uuid.UUID
    key: str
    step_index: int  # -1: checkout / setup / the runner's own lines
    stream: int      # protos.runner_pb2.Stream value
    data: bytes      # whole lines, masked
    ts_ms: int = 0   # when the runner read the first of these lines (Unix ms)


@dataclass(frozen=True)
class RunUpdate:
    run_id: uuid.UUID
    state: str
    message: str = ""


Update = JobUpdate | StepUpdate | LogUpdate | RunUpdate


class Watch:
    """One subscriber's stream of updates; iterate it, `close` it when done."""

    def __init__(self, hub: Hub, run_id: uuid.UUID | None,
                 kinds: tuple[type, ...] | None) -> None:
        self._hub = hub
        self.run_id = run_id
        self.kinds = kinds
        self.queue: asyncio.Queue[Update] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[Update]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Update]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._hub._watches.discard(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """Fans updates out to every `Watch`; publishing never blocks."""

    def __init__(self) -> None:
        self._watches: set[Watch] = set()

    def watch(self, run_id: uuid.UUID | None = None,
              kinds: tuple[type, ...] | None = None) -> Watch:
        """Updates of one run (or all runs when `run_id` is None), from now on; only those of
        the given classes when `kinds` is set."""
        watch = Watch(self, run_id, kinds)
        self._watches.add(watch)
        return watch

    def publish(self, update: Update) -> None:
        for watch in self._watches:
            if (watch.run_id is None or watch.run_id == update.run_id) and (
                    watch.kinds is None or isinstance(update, watch.kinds)):
                watch.queue.put_nowait(update)

    @property
    def watching_logs(self) -> bool:
        """Whether anyone wants log lines (publishing them costs per chunk)."""
        return any(w.kinds is None or LogUpdate in w.kinds for w in self._watches)
