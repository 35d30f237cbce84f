"""Wake-ups for the live pages of this orchestrator: "job J or run R changed".

The pages read everything from Postgres; these signals only say when to look again, so a
stream shows a log line as soon as this host stored it instead of at its next poll. Jobs
running on another host have no signal here: their streams notice changes by polling.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

from orchestrator.updates import Hub, JobUpdate, RunUpdate, StepUpdate


class Subscription:
    """The `event` set whenever one of its keys changed (or the signals closed)."""

    def __init__(self, signals: LiveSignals, keys: tuple[uuid.UUID, ...]) -> None:
        self._signals = signals
        self.keys = keys
        self.event = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._signals.closed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self._signals._drop(self)


class LiveSignals:
    """Who waits for which job or run; `notify` wakes them, `close` ends every stream."""

    def __init__(self) -> None:
        self._waiting: dict[uuid.UUID, set[Subscription]] = {}
        self.closed = False

    def subscribe(self, *keys: uuid.UUID) -> Subscription:
        subscription = Subscription(self, keys)
        for key in keys:
            self._waiting.setdefault(key, set()).add(subscription)
        if self.closed:
            subscription.event.set()
        return subscription

    def notify(self, keys: Iterable[uuid.UUID]) -> None:
        for key in keys:
            for subscription in self._waiting.get(key, ()):
                subscription.event.set()

    def close(self) -> None:
        """Wake every subscriber for the last time (the web server is stopping)."""
        self.closed = True
        for subscriptions in self._waiting.values():
            for subscription in subscriptions:
                subscription.event.set()

    def _drop(self, subscription: Subscription) -> None:
        for key in subscription.keys:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(subscription)
                if not waiting:
                    del self._waiting[key]

    async def follow(self, hub: Hub) -> None:
        """Relay this process's job, step and run changes (published after they committed)."""
        with hub.watch(kinds=(JobUpdate, StepUpdate, RunUpdate)) as watch:
            async for update in watch:
                job_id = getattr(update, "job_id", None)
                self.notify((update.run_id,) if job_id is None else (update.run_id, job_id))
