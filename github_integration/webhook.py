"""The webhook endpoint, `POST /webhooks/github`, on the shared Starlette edge.

Answers, in the order they are decided:
- 401: `X-Hub-Signature-256` missing or not `sha256=` + the HMAC-SHA256 of the raw body
  (checked before anything is parsed);
- 408 / 413: a body too slow or too large (`BodyLimits`), before any of the rest;
- 400: no `X-GitHub-Event` / `X-GitHub-Delivery`, malformed or hostile JSON (see
  `common.forge.webhook.parse_json`), a body naming its repository two ways
  (`common.forge.identity`), an event Solstice does not handle, a body missing what its event
  carries, an App not installed on the repository, an installation named in the body that has
  no access to the repository named in it (no token for that repository is ever obtained);
- 200: a redelivery of a delivery already handled (`duplicate`), or an event that needs
  nothing (`ignored`, recorded as handled: `ping`, a closed pull request, a deleted branch, an `on` that does not
  match, an invalid workflow reported as a failed check run);
- 202: the run request was published and the broker confirmed it (`published`);
- 503: GitHub or the broker could not be reached; the delivery is not recorded as handled,
  so its redelivery is processed afresh.
"""
from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.broker.base import BrokerError
from common.forge.deliveries import DeliveryLog
from common.forge.errors import WebhookRejected
from common.forge.events import Ignored, Published
from common.forge.identity import repository_identity
from common.forge.policy import RunCandidate
from common.forge.signature import verify_github
from common.forge.webhook import BodyLimits, answer, parse_json, read_body
from github_integration.auth import AppAuth
from github_integration.errors import GitHubApiError
from github_integration.events import JobRerun, classify
from github_integration.intake import Intake

log = logging.getLogger(__name__)

FORGE = "github"
# Installation events after which the cached token is useless.
_INSTALLATION_GONE = frozenset({"deleted", "suspend"})


class GitHubWebhook:
    """The handler of `POST /webhooks/github`."""

    def __init__(self, *, secret: str | bytes, api_url: str, intake: Intake,
                 deliveries: DeliveryLog, auth: AppAuth,
                 limits: BodyLimits) -> None:
        self._secret = secret
        self._api_url = api_url
        self._intake = intake
        self._deliveries = deliveries
        self._auth = auth
        self._limits = limits

    def routes(self) -> list[Route]:
        return [Route("/webhooks/github", self.handle, methods=["POST"])]

    async def handle(self, request: Request) -> JSONResponse:
        """Verify, deduplicate, classify and act on one delivery (answers: module docstring)."""
        body = await read_body(request, self._limits)
        if not verify_github(self._secret, body, request.headers.get("x-hub-signature-256")):
            raise WebhookRejected(401, "missing or wrong X-Hub-Signature-256",
                                  hint="the webhook secret of the App and of Solstice must match")
        event = request.headers.get("x-github-event")
        delivery = request.headers.get("x-github-delivery")
        if not event or not delivery:
            raise WebhookRejected(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
        context = {"delivery": delivery, "event": event}
        if await self._deliveries.seen(FORGE, delivery) is not None:
            log.info("redelivery of a delivery already handled", extra=context)
            return answer("duplicate", f"delivery {delivery} was already handled")
        payload = parse_json(body)
        outcome = classify(event, payload, delivery, identity=repository_identity(payload),
                           api_url=self._api_url)
        if isinstance(outcome, Ignored):
            self._forget_installation(event, payload)
            result: Published | Ignored = outcome
        else:
            result = await self._handle(outcome)
        if isinstance(result, Ignored):
            await self._deliveries.record(FORGE, delivery, f"ignored: {result.reason}")
            log.info("webhook ignored", extra=context | {"reason": result.reason})
            return answer("ignored", result.reason)
        await self._deliveries.record(FORGE, delivery, "published")
        return answer("published", status=202, request_id=result.request.request_id)

    async def _handle(self, outcome: RunCandidate | JobRerun) -> Published | Ignored:
        try:
            return await self._intake.handle(outcome)
        except GitHubApiError as exc:
            if not exc.retryable:
                raise WebhookRejected(400, exc.message, hint=exc.hint) from exc
            raise WebhookRejected(503, f"GitHub unavailable, retry later: {exc.message}") from exc
        except BrokerError as exc:
            raise WebhookRejected(503, f"the broker did not confirm the run: {exc.message}",
                                  hint=exc.hint) from exc

    def _forget_installation(self, event: str, payload: dict[str, Any]) -> None:
        installation = payload.get("installation") or {}
        if event == "installation" and payload.get("action") in _INSTALLATION_GONE \
                and isinstance(installation.get("id"), int):
            self._auth.invalidate(installation["id"])
