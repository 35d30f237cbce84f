"""The running Forgejo/Gitea integration: its parts wired together on the shared lifecycle
(`common.forge.service`).

Webhooks are stored in the inbox and processed by its worker (`common.forge.inbox`)
through `Intake.process`; manual runs are planned in the request. Job events are consumed
from the broker's events exchange through the durable queue `<prefix>.events.<events_queue>`;
each becomes a status outbox row (acked once stored) that the `OutboxWorker` sends.
`/readyz` checks the database, the broker and the workers.
"""
from __future__ import annotations

from collections.abc import Mapping

import asyncpg
from starlette.routing import BaseRoute

from common.broker import Broker, Delivery
from common.forge.credentials import credential_routes
from common.forge.deliveries import DeliveryLog
from common.forge.events import ApprovalSent, Ignored, Published
from common.forge.inbox import InboxItem
from common.forge.inbox_api import inbox_routes
from common.forge.outbox import Outbox, OutboxWorker
from common.forge.service import IntegrationService, TaskFactory
from common.messages import JobEvent, decode
from common.metrics import Refresher, outbox_backlog
from common.supervise import Supervisor
from forge_integration.api import ForgejoApi
from forge_integration.checkout import ConfiguredTokens
from forge_integration.config import ForgeIntegrationConfig
from forge_integration.feedback import StatusSender, event_key, event_payload
from forge_integration.intake import Intake
from forge_integration.webhook import ForgeWebhook

OUTBOX_TARGET = "forgejo"


class ForgeIntegration(IntegrationService):
    """Webhooks and manual runs in, commit statuses out, for the configured sites."""

    def __init__(self, config: ForgeIntegrationConfig, pool: asyncpg.Pool, broker: Broker,
                 clients: dict[str, ForgejoApi], *, worker: OutboxWorker | None = None,
                 supervisor: Supervisor | None = None) -> None:
        super().__init__(pool, broker, name="forge", events_queue=config.events_queue,
                         forges=list(config.sites), inbox=config.inbox, supervisor=supervisor)
        self.config = config
        self.clients = clients
        self.deliveries = DeliveryLog(pool)
        self.outbox = Outbox(pool, OUTBOX_TARGET)
        self.worker = worker or OutboxWorker(self.outbox, StatusSender(clients))
        self.intake = Intake(clients, broker, self.outbox, lambda: self.worker.notify(),
                             approval_for=config.approval_for,
                             workflow_limits=config.workflow_limits,
                             workflow_cache=config.inbox.workflow_cache_entries)
        self.webhook = ForgeWebhook(config, clients, inbox=self.inbox,
                                    wake=self.inbox_worker.notify, deliveries=self.deliveries,
                                    intake=self.intake)

    def routes(self) -> list[BaseRoute]:
        tokens = ConfiguredTokens(self.config)
        return [*self.webhook.routes(),
                *credential_routes(self.config.internal_token, tokens.issue, tokens.revoke),
                *inbox_routes(self.config.internal_token, self.inbox, self.inbox_worker.forges)]

    def metrics(self) -> list[Refresher]:
        return [*super().metrics(), outbox_backlog(OUTBOX_TARGET, self.outbox.backlog)]

    def tasks(self) -> Mapping[str, TaskFactory]:
        return {"forge-status-outbox": lambda: self.worker.run()}

    async def process(self, item: InboxItem) -> Published | Ignored | ApprovalSent:
        return await self.intake.process(item)

    async def on_job_event(self, delivery: Delivery) -> None:
        """Store a job event of a Forgejo/Gitea repository in the outbox, then ack it."""
        event = decode(delivery.body, JobEvent)
        if event.repo.forge in self.config.sites:
            if await self.outbox.enqueue(event_key(event), event.sequence, event_payload(event)):
                self.worker.notify()
        await delivery.ack()
