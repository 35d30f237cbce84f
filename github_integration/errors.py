"""Errors from talking to GitHub's REST API."""
from __future__ import annotations

import httpx

from common.errors import SolsticeError


class GitHubApiError(SolsticeError):
    """GitHub answered with an error, or could not be reached.

    `status` is the HTTP status (0 when no answer arrived: timeout, refused connection).
    `retryable` says whether the same request may succeed later: server errors, timeouts,
    rate limits and a token that expired in flight are transient; a 404 or a 422 is not.
    """

    def __init__(self, message: str, *, status: int, retryable: bool,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.retryable = retryable

    @classmethod
    def from_response(cls, what: str, response: httpx.Response) -> "GitHubApiError":
        """The error for a non-2xx `response` to the request described by `what`."""
        try:
            detail = response.json().get("message", "")
        except ValueError:
            detail = response.text[:200]
        status = response.status_code
        rate_limited = status == 429 or (status == 403 and (
            response.headers.get("x-ratelimit-remaining") == "0"
            or "retry-after" in response.headers))
        hint = {
            401: "check the App ID and private key, and that the App is still installed",
            403: "check the App's permissions (checks: write, contents: read, metadata: read)",
            404: "check that the App is installed on the repository",
        }.get(status)
        return cls(f"GitHub {what}: HTTP {status} {detail}".rstrip(), status=status,
                   retryable=status >= 500 or status == 401 or rate_limited,
                   hint=None if rate_limited else hint)

    @classmethod
    def unreachable(cls, what: str, exc: httpx.TransportError) -> "GitHubApiError":
        """The error for a request that got no answer (timeout, connection refused...)."""
        return cls(f"GitHub {what}: no answer ({type(exc).__name__}: {exc})", status=0,
                   retryable=True, hint="check the network path to the GitHub API URL")

    @property
    def not_found(self) -> bool:
        return self.status == 404
