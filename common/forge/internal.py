"""The integrations' internal routes (`/internal/...`): called by orchestrators, never by a
forge, each with `Authorization: Bearer <the integration's internal_token>` (the orchestrator's
`[orchestrator.checkout_credentials.<forge>]` token). Without an `internal_token` they are not
served (404). The protocols: `common.forge.credentials` and `common.forge.inbox_api`.
"""
from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import Request

from common.forge.errors import WebhookRejected


def expected_token(token: SecretStr | None) -> bytes:
    """The bearer the internal routes accept; empty when they are switched off."""
    return token.get_secret_value().encode() if token is not None else b""


def authorize(request: Request, expected: bytes, served: str) -> None:
    """Raise `WebhookRejected` 404 when the internal routes are off, 401 unless `request`
    carries the bearer `expected` (compared in constant time). `served` names what the route
    serves, for the 404."""
    if not expected:
        raise WebhookRejected(404, f"{served}: not served here (no internal_token)",
                              hint="set internal_token on the integration and the "
                                   "orchestrators' checkout_credentials")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected):
        raise WebhookRejected(401, "missing or wrong bearer token",
                              hint="the orchestrator's checkout_credentials token must "
                                   "equal the integration's internal_token")
