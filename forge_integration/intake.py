"""From a Forgejo/Gitea run candidate to a confirmed `RunRequest` on the broker.

Trust, workflow fetch and trigger filtering are the shared fork policy
(`common.forge.policy.plan_run`) with the site's `ForgejoApi` as its reader. A workflow that
fails validation becomes a failed `solstice/workflow` commit status (queued in the status
outbox, see `feedback`) pointing at the first problem.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from common.broker import Broker
from common.forge.approval import approve
from common.forge.cache import CachedReader
from common.forge.errors import WebhookRejected
from common.forge.events import ApprovalSent, Ignored, Published
from common.forge.identity import repository_identity
from common.forge.inbox import InboxItem
from common.forge.outbox import Outbox
from common.forge.policy import InvalidWorkflow, RunCandidate, plan_run
from common.forge.webhook import parse_json
from common.observability import tracer
from common.workflow import DEFAULT_LIMITS, Limits
from forge_integration.api import ForgejoApi
from forge_integration.approval import approval_asked
from forge_integration.events import classify
from forge_integration.feedback import invalid_workflow_payload

log = logging.getLogger(__name__)


class Intake:
    """Turns run candidates into confirmed run requests."""

    def __init__(self, clients: dict[str, ForgejoApi], broker: Broker, outbox: Outbox,
                 wake_outbox: Callable[[], None], *, approval_for: Callable[[str], bool],
                 workflow_limits: Limits = DEFAULT_LIMITS, workflow_cache: int = 0) -> None:
        """`workflow_cache`: how many workflow files read at a commit each site remembers."""
        self._clients = clients
        self._readers = {forge: CachedReader(client, workflow_cache)
                         for forge, client in clients.items()}
        self._broker = broker
        self._outbox = outbox
        self._wake_outbox = wake_outbox
        self._approval_for = approval_for
        self._workflow_limits = workflow_limits

    async def process(self, item: InboxItem) -> Published | Ignored | ApprovalSent:
        """The inbox worker's processor: the stored delivery classified again, then handled."""
        client = self._clients.get(item.forge)
        if client is None:
            raise WebhookRejected(400, f"no {item.forge} site configured any more",
                                  hint=f"add [forge_integration.sites.{item.forge}] back")
        payload = parse_json(item.body)
        identity = repository_identity(payload)
        asked = approval_asked(item.event, payload, item.delivery_id, identity=identity,
                               forge=item.forge, api_url=client.api_url)
        if asked is not None:
            return await approve(asked, client, self._broker)
        outcome = classify(item.event, payload, item.delivery_id, identity=identity,
                           forge=item.forge, api_url=client.api_url)
        if isinstance(outcome, Ignored):
            return outcome
        return await self.handle(outcome)

    async def handle(self, candidate: RunCandidate) -> Published | Ignored:
        """Fetch the workflow, decide trust, publish; `Ignored` when nothing should run.

        Raises `ForgeApiError` when the forge could not answer, `BrokerError` when the broker
        did not confirm the run.
        """
        with tracer(__name__).start_as_current_span("forge.intake") as span:
            span.set_attribute("solstice.request_id", candidate.request_id)
            plan = await plan_run(candidate, self._readers[candidate.repo.forge],
                                  approval_for_untrusted=self._approval_for(candidate.repo.full_name),
                                  limits=self._workflow_limits)
            if isinstance(plan, Ignored):
                return plan
            if isinstance(plan, InvalidWorkflow):
                key, row = invalid_workflow_payload(plan)
                await self._outbox.enqueue(key, 1, row)
                self._wake_outbox()
                return Ignored(f"the workflow does not validate: {plan.error.message}; "
                               "reported as a failed solstice/workflow status")
            await self._broker.publish_run(plan)
            log.info("run published", extra={"request_id": plan.request_id,
                                             "repo": candidate.repo.full_name,
                                             "commit": candidate.commit_sha,
                                             "event": candidate.event.value,
                                             "trusted": plan.trusted})
            return Published(plan)
