"""The running GitHub integration: its parts wired together on the shared lifecycle
(`common.forge.service`).

`GitHubIntegration` owns the webhook handler (into the inbox), the intake (the inbox
worker's processor), the job-event consumer that feeds the status outbox, the outbox worker
that turns rows into check runs, and the recovery that asks GitHub to redeliver the webhooks
it could not deliver.
"""
from __future__ import annotations

from collections.abc import Mapping

import asyncpg
import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.routing import BaseRoute

from common.broker import Broker, Delivery
from common.forge.credentials import credential_routes
from common.forge.events import ApprovalSent, Ignored, Published
from common.forge.inbox import InboxItem
from common.forge.inbox_api import inbox_routes
from common.forge.outbox import Outbox, OutboxWorker
from common.forge.service import IntegrationService, TaskFactory
from common.metrics import Refresher, outbox_backlog
from common.retry import Backoff
from common.supervise import Supervisor
from github_integration.api import GitHubApi
from github_integration.auth import AppAuth
from github_integration.checkout import CheckoutTokens
from github_integration.config import GitHubIntegrationConfig
from github_integration.feedback import TARGET, CheckRunOutbox, CheckRunSender, JobEventFeed
from github_integration.intake import Intake
from github_integration.recovery import DeliveryRecovery
from github_integration.reporter import CheckRunReporter, CheckRunStore
from github_integration.webhook import FORGE, GitHubWebhook


class GitHubIntegration(IntegrationService):
    """Webhooks in, check runs out, for one GitHub App."""

    def __init__(self, config: GitHubIntegrationConfig, pool: asyncpg.Pool, broker: Broker,
                 http: httpx.AsyncClient, private_key: rsa.RSAPrivateKey, *,
                 outbox_backoff: Backoff = Backoff(initial=1.0, maximum=300.0),
                 outbox_poll: float = 1.0, supervisor: Supervisor | None = None) -> None:
        assert config.app_id is not None, "config.check() first"
        super().__init__(pool, broker, name="github", events_queue=config.events_queue,
                         forges=[FORGE], inbox=config.inbox, supervisor=supervisor)
        self.config = config
        self.auth = AppAuth(config.app_id, private_key, http)
        self.api = GitHubApi(http, self.auth)
        self.outbox = Outbox(pool, TARGET)
        reporter = CheckRunReporter(self.api, CheckRunStore(pool))
        self.worker = OutboxWorker(self.outbox, CheckRunSender(self.api, reporter),
                                   backoff=outbox_backoff, poll_interval=outbox_poll,
                                   send_timeout=min(60.0, config.api_timeout * 6))
        self.check_runs = CheckRunOutbox(self.outbox, self.worker)
        self._feed = JobEventFeed(self.check_runs)
        self.intake = Intake(self.api, broker, self.check_runs, api_url=config.api_url,
                             approval_for=config.approval_for,
                             workflow_path=config.workflow_path,
                             workflow_limits=config.workflow_limits,
                             workflow_cache=config.inbox.workflow_cache_entries)
        self.webhook = GitHubWebhook(
            secret=config.webhook_secret.get_secret_value(), api_url=config.api_url,
            inbox=self.inbox, wake=self.inbox_worker.notify, auth=self.auth,
            limits=config.body_limits)
        self.recovery = DeliveryRecovery(
            self.api, lambda guids: self.inbox.stored(FORGE, guids),
            interval=config.redelivery_interval, lookback=config.redelivery_lookback,
            attempts=config.redelivery_attempts)

    def routes(self) -> list[BaseRoute]:
        tokens = CheckoutTokens(self.api)
        return [*self.webhook.routes(),
                *credential_routes(self.config.internal_token, tokens.issue, tokens.revoke),
                *inbox_routes(self.config.internal_token, self.inbox, self.inbox_worker.forges)]

    def metrics(self) -> list[Refresher]:
        return [*super().metrics(), outbox_backlog(TARGET, self.outbox.backlog)]

    def tasks(self) -> Mapping[str, TaskFactory]:
        return {"github-outbox": self.worker.run, "github-recovery": self.recovery.run}

    async def process(self, item: InboxItem) -> Published | Ignored | ApprovalSent:
        return await self.intake.process(item)

    async def on_job_event(self, delivery: Delivery) -> None:
        """Queue a job event of a GitHub repository for its check run, then ack it."""
        await self._feed(delivery)
