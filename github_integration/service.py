"""The running GitHub integration: its parts wired together, with their lifecycle.

`GitHubIntegration` owns the webhook handler, the job-event consumer that feeds the status
outbox, and the outbox worker that turns rows into check runs. `start` subscribes and starts
the worker under `supervisor` (`serve` waits on it: the worker failing stops the service);
`stop` cancels both (rows not yet delivered stay in PostgreSQL for the next start).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from common.broker import Broker, Subscription
from common.forge.credentials import credential_routes
from common.forge.deliveries import DeliveryLog
from common.forge.outbox import Outbox, OutboxWorker
from common.health import broker_check, database_check
from common.metrics import outbox_backlog
from common.retry import Backoff
from common.supervise import Supervisor
from github_integration.api import GitHubApi
from github_integration.app import GitHubWebhook, create_app
from github_integration.auth import AppAuth
from github_integration.checkout import CheckoutTokens
from github_integration.config import GitHubIntegrationConfig
from github_integration.feedback import TARGET, CheckRunOutbox, CheckRunSender, JobEventFeed
from github_integration.intake import Intake
from github_integration.reporter import CheckRunReporter, CheckRunStore


class GitHubIntegration:
    """Webhooks in, check runs out, for one GitHub App."""

    def __init__(self, config: GitHubIntegrationConfig, pool: asyncpg.Pool, broker: Broker,
                 http: httpx.AsyncClient, private_key: rsa.RSAPrivateKey, *,
                 outbox_backoff: Backoff = Backoff(initial=1.0, maximum=300.0),
                 outbox_poll: float = 1.0, supervisor: Supervisor | None = None) -> None:
        assert config.app_id is not None, "config.check() first"
        self.config = config
        self.pool = pool
        self.supervisor = supervisor or Supervisor()
        self.auth = AppAuth(config.app_id, private_key, http)
        self.api = GitHubApi(http, self.auth)
        self.outbox = Outbox(pool, TARGET)
        reporter = CheckRunReporter(self.api, CheckRunStore(pool))
        self.worker = OutboxWorker(self.outbox, CheckRunSender(self.api, reporter),
                                   backoff=outbox_backoff, poll_interval=outbox_poll,
                                   send_timeout=min(60.0, config.api_timeout * 6))
        self.check_runs = CheckRunOutbox(self.outbox, self.worker)
        self._broker = broker
        self.webhook = GitHubWebhook(
            secret=config.webhook_secret.get_secret_value(), api_url=config.api_url,
            intake=Intake(self.api, broker, self.check_runs, approval_for=config.approval_for,
                          workflow_path=config.workflow_path,
                          workflow_limits=config.workflow_limits),
            deliveries=DeliveryLog(pool), auth=self.auth, limits=config.body_limits,
            approvals=self.api, broker=broker)
        self._subscription: Subscription | None = None
        self._worker_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Consume job events and send check runs (the broker must be connected)."""
        self._subscription = await self._broker.consume_events(
            self.config.events_queue, JobEventFeed(self.check_runs))
        self._worker_task = self.supervisor.spawn("github-outbox", self.worker.run())

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()
        if self._worker_task is not None:
            self._worker_task.cancel()
            # A failure was reported by the supervisor already.
            await asyncio.gather(self._worker_task, return_exceptions=True)

    def app(self) -> Starlette:
        """The web app; its lifespan starts and stops the consumer and the worker."""
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        tokens = CheckoutTokens(self.api)
        return create_app(self.webhook, lifespan=lifespan, extra_routes=credential_routes(
            self.config.internal_token, tokens.issue, tokens.revoke), checks={
            "database": database_check(self.pool), "broker": broker_check(self._broker),
            "tasks": self.supervisor.ready},
            metrics=[outbox_backlog(TARGET, self.outbox.backlog)])
