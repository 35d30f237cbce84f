"""Checkout credentials: what a runner clones a private repository with, and how it is asked for.

The integrations hold the forges' credentials (the GitHub App's private key, the Forgejo/Gitea
read tokens); orchestrators hold none. When an orchestrator starts a job it asks the
integration of the job's forge, over HTTP, for a credential for that one repository:

    POST /internal/checkout-credential
    Authorization: Bearer <the integration's internal_token>
    {"repo": {...the run's Repo...}, "job_id": "..."}

answered 200 with a `CheckoutCredential` (`username`, `password`, `expires_at` or null), 204
when the integration has no credential for that repository (it is cloned without one), 401 for
a missing or wrong bearer token, 404 when the endpoint is disabled (no `internal_token`), 400
for a body that is not a `CredentialRequest` or a repository the forge refuses a credential
for (e.g. one the GitHub App is not installed on), 503 when the forge could not be reached. The
credential never crosses the broker: it goes integration -> orchestrator in this answer, then
orchestrator -> runner inside `GetJob`.
"""
from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.forge.errors import ForgeApiError, WebhookRejected
from common.forge.webhook import BodyLimits, parse_json, read_body
from common.messages import Repo

log = logging.getLogger(__name__)

PATH = "/internal/checkout-credential"


class CredentialRequest(BaseModel):
    """Which repository a job clones, and which job asks."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    repo: Repo
    job_id: uuid.UUID


class CheckoutCredential(BaseModel):
    """HTTP Basic credentials for one clone; `expires_at` None when the forge does not expire
    them (a configured Forgejo/Gitea token)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    username: str
    password: str
    expires_at: datetime | None = None


Issuer = Callable[[CredentialRequest], Awaitable[CheckoutCredential | None]]


def credential_route(token: SecretStr | None, issue: Issuer) -> Route:
    """The `POST /internal/checkout-credential` route, answering with what `issue` returns.

    `issue` raises `ForgeApiError` when the forge refuses (400) or cannot be reached (503,
    retryable), or `WebhookRejected` for a request it cannot serve (its status)."""
    expected = token.get_secret_value().encode() if token is not None else b""

    async def endpoint(request: Request) -> Response:
        if not expected:
            raise WebhookRejected(404, "checkout credentials are not served here",
                                  hint="set internal_token on the integration and the "
                                       "orchestrators' checkout_credentials")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected):
            raise WebhookRejected(401, "missing or wrong bearer token",
                                  hint="the orchestrator's checkout_credentials token must "
                                       "equal the integration's internal_token")
        payload = parse_json(await read_body(request, BodyLimits(max_bytes=64 * 1024)))
        try:
            asked = CredentialRequest.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise WebhookRejected(400, f"malformed credential request: {where}: "
                                       f"{first['msg']}") from exc
        try:
            credential = await issue(asked)
        except ForgeApiError as exc:
            raise WebhookRejected(503 if exc.retryable else 400, f"no checkout credential for {asked.repo.full_name}: "
                                       f"{exc.message}", hint=exc.hint) from exc
        log.info("checkout credential issued" if credential else "no checkout credential needed",
                 extra={"repo": asked.repo.full_name, "job_id": str(asked.job_id)})
        if credential is None:
            return Response(status_code=204)
        return JSONResponse(credential.model_dump(mode="json"),
                            headers={"Cache-Control": "no-store"})

    return Route(PATH, endpoint, methods=["POST"])
