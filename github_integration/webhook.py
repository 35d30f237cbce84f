"""The webhook endpoint, `POST /webhooks/github`: verify, classify, store in the inbox
(`common.forge.inbox`), answer. The inbox worker plans and publishes the run later
(`github_integration.intake.Intake.process`).

Answers, in the order they are decided:
- 401: `X-Hub-Signature-256` missing or not `sha256=` + the HMAC-SHA256 of the raw body
  (checked before anything is parsed; nothing is stored);
- 408 / 413: a body too slow or too large (`BodyLimits`), before any of the rest;
- 400: no `X-GitHub-Event` / `X-GitHub-Delivery`; malformed or hostile JSON (see
  `common.forge.webhook.parse_json`), a body naming its repository two ways
  (`common.forge.identity`), an event Solstice does not handle, a body missing what its event
  carries: stored as rejected with the reason;
- 200: a redelivery of a delivery already received (`duplicate`), or an event that needs
  nothing (`ignored`, stored with the reason: `ping`, a closed pull request, a deleted
  branch); an installation deleted or suspended also drops its cached token;
- 202: stored; the worker fetches the workflow and publishes the run (`accepted`). What
  needs GitHub is decided there: an App not installed on the repository, or an installation
  named in the body without access to it, parks the delivery with that error (no token for
  that repository is ever obtained); an `on` that does not match, no workflow file, or an
  invalid one (reported as a failed check run) makes it `ignored`;
- 503: the database could not store it; GitHub (or the recovery) delivers it again.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.forge.approval import ApprovalAsked
from common.forge.errors import WebhookRejected
from common.forge.events import Ignored
from common.forge.identity import repository_identity
from common.forge.inbox import Inbox, Received, receive
from common.forge.signature import verify_github
from common.forge.webhook import BodyLimits, parse_json, read_body
from github_integration.approval import approval_asked
from github_integration.auth import AppAuth
from github_integration.events import Outcome, classify

FORGE = "github"
# Installation events after which the cached token is useless.
_INSTALLATION_GONE = frozenset({"deleted", "suspend"})


class GitHubWebhook:
    """The handler of `POST /webhooks/github`."""

    def __init__(self, *, secret: str | bytes, api_url: str, inbox: Inbox,
                 wake: Callable[[], None], auth: AppAuth, limits: BodyLimits) -> None:
        self._secret = secret
        self._api_url = api_url
        self._inbox = inbox
        self._wake = wake
        self._auth = auth
        self._limits = limits

    def routes(self) -> list[Route]:
        return [Route("/webhooks/github", self.handle, methods=["POST"])]

    async def handle(self, request: Request) -> JSONResponse:
        """Verify, classify and store one delivery (answers: module docstring)."""
        body = await read_body(request, self._limits)
        if not verify_github(self._secret, body, request.headers.get("x-hub-signature-256")):
            raise WebhookRejected(401, "missing or wrong X-Hub-Signature-256",
                                  hint="the webhook secret of the App and of Solstice must match")
        event = request.headers.get("x-github-event")
        delivery = request.headers.get("x-github-delivery")
        if not event or not delivery:
            raise WebhookRejected(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")

        def classify_body() -> Outcome | ApprovalAsked:
            payload = parse_json(body)
            identity = repository_identity(payload)
            # "Approve and run" or `/solstice approve`: stored, the actor's permission checked
            # by the worker (`github_integration.approval`).
            asked = approval_asked(event, payload, delivery, identity=identity,
                                   api_url=self._api_url)
            if asked is not None:
                return asked
            outcome = classify(event, payload, delivery, identity=identity,
                               api_url=self._api_url)
            if isinstance(outcome, Ignored):
                self._forget_installation(event, payload)
            return outcome

        return await receive(self._inbox, Received(FORGE, delivery, event, body),
                             classify_body, self._wake)

    def _forget_installation(self, event: str, payload: dict[str, Any]) -> None:
        installation = payload.get("installation") or {}
        if event == "installation" and payload.get("action") in _INSTALLATION_GONE \
                and isinstance(installation.get("id"), int):
            self._auth.invalidate(installation["id"])
