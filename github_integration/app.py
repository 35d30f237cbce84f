"""The webhook endpoint: `POST /webhooks/github`, plus `GET /healthz`.

Answers, in the order they are decided:
- 401: `X-Hub-Signature-256` missing or not the HMAC-SHA256 of the raw body (nothing parsed);
- 400: no `X-GitHub-Event` / `X-GitHub-Delivery`, malformed JSON, an event Solstice does not
  handle, a body missing what its event carries, an App not installed on the repository;
- 200: a redelivery of a delivery already acted on, or an event that needs nothing (`ping`,
  a closed pull request, a deleted branch, a workflow whose `on` does not match...);
- 202: the run request was published and the broker confirmed it;
- 503: GitHub or the broker could not be reached; the delivery is not recorded, so a
  redelivery is processed afresh.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.types import Lifespan
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.broker.base import BrokerError
from github_integration.auth import AppAuth
from github_integration.deliveries import DeliveryLog
from github_integration.errors import GitHubApiError
from github_integration.events import Ignored, PayloadError, classify
from github_integration.intake import Intake

log = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="
# Installation events after which the cached token is useless.
_INSTALLATION_GONE = frozenset({"deleted", "suspend"})


def signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` is GitHub's `sha256=<hex HMAC-SHA256 of body>`, compared in constant time."""
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len(SIGNATURE_PREFIX):].strip().lower())


def _answer(status: int, outcome: str, **fields: object) -> JSONResponse:
    return JSONResponse({"outcome": outcome, **fields}, status)


def create_app(*, secret: bytes, intake: Intake, deliveries: DeliveryLog, auth: AppAuth,
               lifespan: Lifespan[Any] | None = None) -> Starlette:
    """The Starlette application serving GitHub's webhooks with the given collaborators."""

    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        if not signature_valid(secret, body, request.headers.get("x-hub-signature-256")):
            log.warning("webhook with a missing or wrong signature",
                        extra={"delivery": request.headers.get("x-github-delivery", "")})
            return _answer(401, "rejected", reason="missing or wrong X-Hub-Signature-256")
        event = request.headers.get("x-github-event")
        delivery = request.headers.get("x-github-delivery")
        if not event or not delivery:
            return _answer(400, "rejected",
                           reason="X-GitHub-Event and X-GitHub-Delivery headers are required")
        context = {"delivery": delivery, "event": event}
        if await deliveries.seen(delivery):
            log.info("redelivery of a delivery already acted on", extra=context)
            return _answer(200, "duplicate", delivery=delivery)
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return _answer(400, "rejected", reason=f"body is not JSON: {exc}")
        try:
            outcome = classify(event, payload, delivery)
            if isinstance(outcome, Ignored):
                installation = payload.get("installation") or {}
                if event == "installation" and payload.get("action") in _INSTALLATION_GONE \
                        and isinstance(installation.get("id"), int):
                    auth.invalidate(installation["id"])
                log.info("webhook ignored", extra=context | {"reason": outcome.reason})
                return _answer(200, "ignored", reason=outcome.reason)
            result = await intake.handle(outcome)
        except PayloadError as exc:
            log.info("webhook rejected", extra=context | {"reason": exc.message})
            return _answer(400, "rejected", reason=str(exc))
        except GitHubApiError as exc:
            if not exc.retryable:
                log.warning("GitHub refused a request for a webhook",
                            extra=context | {"reason": exc.message})
                return _answer(400, "rejected", reason=str(exc))
            log.warning("GitHub unavailable; asking for a redelivery",
                        extra=context | {"reason": exc.message})
            return _answer(503, "retry", reason=str(exc))
        except BrokerError as exc:
            log.warning("broker did not confirm; asking for a redelivery",
                        extra=context | {"reason": exc.message})
            return _answer(503, "retry", reason=str(exc))
        if isinstance(result, Ignored):
            log.info("webhook ignored", extra=context | {"reason": result.reason})
            await deliveries.record(delivery, event, None)
            return _answer(200, "ignored", reason=result.reason)
        await deliveries.record(delivery, event, result.request.request_id)
        return _answer(202, "published", request_id=result.request.request_id)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/webhooks/github", webhook, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])],
                     lifespan=lifespan)
