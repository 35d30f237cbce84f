"""The Admin RPCs of the integrations' webhook inboxes (`ciadm inbox`), mixed into
`AdminService`. The inboxes are the integrations' (`orchestrator.integration_inbox` asks them
over HTTP); a retry, and every refused one, goes to the audit log."""
from __future__ import annotations

import logging
from datetime import datetime

import grpc

from common.errors import SolsticeError
from common.forge.inbox import InboxEntry, InboxState
from common.forge.inbox_api import BACKLOG, DEFAULT_LIMIT
from orchestrator import audit, validate
from orchestrator.adminauth import actor
from orchestrator.db import Database
from orchestrator.integration_inbox import (
    IntegrationInbox,
    IntegrationInboxes,
    IntegrationUnavailable,
    NoIntegration,
    NotParked,
)
from protos import admin_pb2

log = logging.getLogger(__name__)

RETRY_ACTION = "inbox.retry"
# An integration that does not answer is not UNAVAILABLE: that code says the orchestrator
# itself did not answer (which is how ciadm reads it); the operator has to start the integration.
REFUSALS = {NoIntegration: grpc.StatusCode.FAILED_PRECONDITION,
            NotParked: grpc.StatusCode.NOT_FOUND,
            IntegrationUnavailable: grpc.StatusCode.FAILED_PRECONDITION}


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def delivery_message(delivery: InboxEntry) -> admin_pb2.InboxDelivery:
    """One integration's stored delivery as the Admin service answers it."""
    return admin_pb2.InboxDelivery(
        id=delivery.id, forge=delivery.forge, delivery_id=delivery.delivery_id,
        event=delivery.event, state=delivery.state.value, outcome=delivery.outcome,
        attempts=delivery.attempts, last_error=delivery.last_error,
        received_unix_ms=_ms(delivery.received_at),
        next_attempt_unix_ms=_ms(delivery.next_attempt_at))


def _inbox_message(answer: IntegrationInbox) -> admin_pb2.IntegrationInbox:
    message = admin_pb2.IntegrationInbox(url=answer.integration.url,
                                         forges=answer.integration.forges, error=answer.error)
    if answer.listing is not None:
        message.counts.update({state.value: n for state, n in answer.listing.counts.items()})
        message.deliveries.extend(delivery_message(d) for d in answer.listing.entries)
    return message


class InboxAdmin:
    """`ListInbox` and `RetryInbox`."""

    db: Database
    integrations: IntegrationInboxes

    async def ListInbox(self, request: admin_pb2.ListInboxRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.ListInboxReply:
        await validate.require(context, validate.list_inbox_request, request)
        states = (InboxState.PARKED,) if request.parked_only else BACKLOG
        try:
            answers = await self.integrations.listings(states, request.limit or DEFAULT_LIMIT)
        except NoIntegration as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return admin_pb2.ListInboxReply(integrations=[_inbox_message(a) for a in answers])

    async def RetryInbox(self, request: admin_pb2.RetryInboxRequest,
                         context: grpc.aio.ServicerContext) -> admin_pb2.InboxDelivery:
        target = f"{request.forge}:{request.id}"
        try:
            validate.retry_inbox_request(request)
        except validate.InvalidMessage as exc:
            await self._refused_retry(context, grpc.StatusCode.INVALID_ARGUMENT, target, str(exc))
        try:
            delivery = await self.integrations.retry(request.forge, request.id)
        except (NoIntegration, NotParked, IntegrationUnavailable) as exc:
            await self._refused_retry(context, REFUSALS[type(exc)], target, exc)
        await audit.record(self.db.pool, actor=actor(), action=RETRY_ACTION, target=target,
                           detail=f"delivery {delivery.delivery_id} ({delivery.event})")
        log.info("parked webhook delivery retried", extra={"target": target, "by": actor()})
        return delivery_message(delivery)

    async def _refused_retry(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                             target: str, why: SolsticeError | str) -> None:
        message = why.message if isinstance(why, SolsticeError) else why
        await audit.record(self.db.pool, actor=actor(), action=RETRY_ACTION, target=target,
                           outcome=f"refused: {message}")
        await context.abort(code, str(why))
