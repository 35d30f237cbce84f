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

When the job's machine is gone the orchestrator hands the credential back,

    POST /internal/checkout-credential/revoke   (same bearer)
    {"repo": {...}, "job_id": "...", "credential": {...}}

and the integration revokes it where the forge can (GitHub: `DELETE /installation/token`);
answered 204 either way (a credential already expired or unknown is as good as revoked).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.forge.errors import ForgeApiError, WebhookRejected
from common.forge.internal import authorize, expected_token
from common.forge.webhook import BodyLimits, parse_json, read_body
from common.messages import Repo

log = logging.getLogger(__name__)

PATH = "/internal/checkout-credential"
REVOKE_PATH = "/internal/checkout-credential/revoke"
SERVED = "checkout credentials"
M = TypeVar("M", bound=BaseModel)


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


class RevokeRequest(BaseModel):
    """A job's credential handed back once the job's machine is gone."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    repo: Repo
    job_id: uuid.UUID
    credential: CheckoutCredential


Issuer = Callable[[CredentialRequest], Awaitable[CheckoutCredential | None]]
Revoker = Callable[[RevokeRequest], Awaitable[None]]


async def _body(request: Request, model: type[M]) -> M:
    payload = parse_json(await read_body(request, BodyLimits(max_bytes=64 * 1024)))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise WebhookRejected(400, f"malformed {model.__name__}: {where}: "
                                   f"{first['msg']}") from exc


def credential_routes(token: SecretStr | None, issue: Issuer, revoke: Revoker) -> list[Route]:
    """`POST /internal/checkout-credential` answering with what `issue` returns, and
    `POST /internal/checkout-credential/revoke` calling `revoke`.

    `issue` raises `ForgeApiError` when the forge refuses (400) or cannot be reached (503,
    retryable), or `WebhookRejected` for a request it cannot serve (its status); `revoke`
    does its best and raises nothing it expects."""
    expected = expected_token(token)

    async def issue_endpoint(request: Request) -> Response:
        authorize(request, expected, SERVED)
        asked = await _body(request, CredentialRequest)
        try:
            credential = await issue(asked)
        except ForgeApiError as exc:
            raise WebhookRejected(503 if exc.retryable else 400, f"no checkout credential "
                                  f"for {asked.repo.full_name}: {exc.message}",
                                  hint=exc.hint) from exc
        log.info("checkout credential issued" if credential else "no checkout credential needed",
                 extra={"repo": asked.repo.full_name, "job_id": str(asked.job_id)})
        if credential is None:
            return Response(status_code=204)
        return JSONResponse(credential.model_dump(mode="json"),
                            headers={"Cache-Control": "no-store"})

    async def revoke_endpoint(request: Request) -> Response:
        authorize(request, expected, SERVED)
        handed_back = await _body(request, RevokeRequest)
        await revoke(handed_back)
        return Response(status_code=204)

    return [Route(PATH, issue_endpoint, methods=["POST"]),
            Route(REVOKE_PATH, revoke_endpoint, methods=["POST"])]
