"""Errors of the forge integrations' edges: forge APIs that fail, webhooks that are refused."""
from __future__ import annotations

import httpx

from common.errors import SolsticeError


def error_detail(response: httpx.Response) -> str:
    """What a forge API said in its error body: the `message` of a JSON object (Forgejo, Gitea
    and GitHub all answer so), else the start of the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else ""


class ForgeApiError(SolsticeError):
    """A forge's API answered with an error, or could not be reached.

    `status` is the HTTP status (0 when no answer arrived). `retryable` says whether the same
    request may succeed later (server errors, timeouts, rate limits); the status outbox gives up
    on a row only when it is False.
    """

    def __init__(self, message: str, *, status: int, retryable: bool, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.retryable = retryable

    @classmethod
    def from_response(cls, forge: str, what: str, response: httpx.Response) -> ForgeApiError:
        """The error for a non-2xx `response` to the request described by `what`."""
        detail = error_detail(response)
        status = response.status_code
        hint = {
            401: f"check the {forge} API token",
            403: f"check that the {forge} token may write commit statuses (repository: write)",
            404: f"check the {forge} API URL and that the repository exists",
        }.get(status)
        return cls(f"{forge} {what}: HTTP {status} {detail}".rstrip(), status=status,
                   retryable=status >= 500 or status in (408, 429), hint=hint)

    @classmethod
    def unreachable(cls, forge: str, what: str, exc: httpx.TransportError) -> ForgeApiError:
        """The error for a request that got no answer (timeout, connection refused...)."""
        return cls(f"{forge} {what}: no answer ({type(exc).__name__}: {exc})", status=0,
                   retryable=True, hint=f"check the network path to the {forge} API URL")


class WebhookRejected(SolsticeError):
    """A webhook the integration refuses; answered with `status` and this message as reason.

    401: signature missing or wrong; 400: malformed JSON, unknown event, missing fields;
    503: a dependency (broker, database, forge API) failed, so the forge should retry.
    """

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
