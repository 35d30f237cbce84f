"""The lifecycle both integrations share: long-lived tasks under the service's `Supervisor`
(the webhook inbox worker among them), job events consumed from the broker, and the
Starlette app serving the routes with `/healthz` and `/readyz` (whose details show the inbox
backlog: deliveries pending and parked).

An integration subclasses `IntegrationService` and says what is its own: its routes, how it
processes a stored delivery, its other tasks (the status outbox worker...), and what becomes
of a job event. `start` spawns the tasks and subscribes; `stop` unsubscribes and cancels
them (rows not yet handled stay in PostgreSQL for the next start). `app()` runs both from the app's lifespan.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from common.broker import Broker, Delivery, Subscription
from common.forge.answering import Answering
from common.forge.config import InboxSettings
from common.forge.events import ApprovalSent, Ignored, Published
from common.forge.inbox import Inbox, InboxItem, InboxWorker
from common.forge.webhook import webhook_app
from common.health import Check, broker_check, database_check
from common.metrics import Refresher, inbox_backlog
from common.supervise import Supervisor

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class IntegrationService(abc.ABC):
    """One integration's parts with their lifecycle; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, *, name: str, events_queue: str,
                 forges: Sequence[str], inbox: InboxSettings,
                 supervisor: Supervisor | None = None) -> None:
        """`name` prefixes the task names; the inbox worker takes the deliveries of `forges`."""
        self.pool = pool
        self.broker = broker
        # `serve` waits on it: a task failing stops the service (exit non-zero).
        self.supervisor = supervisor or Supervisor()
        self.name = name
        self._events_queue = events_queue
        self.inbox = Inbox(pool)
        self.answering = Answering()
        self.inbox_worker = InboxWorker(self.inbox, forges, self.process, settings=inbox,
                                        answering=self.answering)
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None

    @abc.abstractmethod
    def routes(self) -> list[BaseRoute]:
        """The integration's own routes (its webhook endpoint...)."""

    @abc.abstractmethod
    def tasks(self) -> Mapping[str, TaskFactory]:
        """The long-lived tasks to run while serving, by name, besides the inbox worker."""

    @abc.abstractmethod
    async def process(self, item: InboxItem) -> Published | Ignored | ApprovalSent:
        """Plan and publish the run of one stored delivery (the inbox worker calls it)."""

    @abc.abstractmethod
    async def on_job_event(self, delivery: Delivery) -> None:
        """Handle one job event from the broker (store it for the forge, then ack)."""

    def checks(self) -> dict[str, Check]:
        """The `/readyz` checks: database, broker, every supervised task alive."""
        return {"database": database_check(self.pool), "broker": broker_check(self.broker),
                "tasks": self.supervisor.ready}

    async def start(self) -> None:
        """Start the tasks and consume job events (the broker must be connected)."""
        tasks = {f"{self.name}-inbox": self.inbox_worker.run,
                 f"{self.name}-inbox-listener": lambda: self.inbox_worker.listen(self.pool),
                 **self.tasks()}
        for name, task in tasks.items():
            self._tasks.append(self.supervisor.spawn(name, task()))
        self._subscription = await self.broker.consume_events(self._events_queue,
                                                              self.on_job_event)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
        for task in self._tasks:
            task.cancel()
        # A failure was reported by the supervisor already.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def app(self) -> ASGIApp:
        """The web app; its lifespan starts and stops the tasks and the consumer."""
        return webhook_app(self.routes(), lifespan=self._lifespan, checks=self.checks(),
                           details={"inbox": self.inbox_backlog}, metrics=self.metrics(),
                           answering=self.answering)

    def metrics(self) -> list[Refresher]:
        """What `/metrics` refreshes before answering: the inbox backlog (and the
        integration's own, added by overriding)."""
        return [inbox_backlog(self.name, self.inbox_backlog)]

    async def inbox_backlog(self) -> dict[str, int]:
        """This service's deliveries still to process and those parked (`/readyz` details)."""
        counts = await self.inbox.counts(self.inbox_worker.forges)
        return {"pending": counts.get("pending", 0), "parked": counts.get("parked", 0)}
