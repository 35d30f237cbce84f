"""Errors from talking to GitHub's REST API."""
from __future__ import annotations

import httpx

from common.forge.errors import ForgeApiError, error_detail

FORGE = "GitHub"


class GitHubApiError(ForgeApiError):
    """GitHub answered with an error, or could not be reached (`status` 0).

    GitHub's retry rules differ from Forgejo's: an expired or revoked installation token (401)
    is replaced by a fresh one, and a 403 is a rate limit only when GitHub says so
    (`x-ratelimit-remaining: 0` or `retry-after`); otherwise it is a missing permission.
    """

    @classmethod
    def from_response(cls, forge: str, what: str, response: httpx.Response) -> GitHubApiError:
        """The error for a non-2xx `response` to the request described by `what`."""
        detail = error_detail(response)
        status = response.status_code
        rate_limited = status == 429 or (status == 403 and (
            response.headers.get("x-ratelimit-remaining") == "0"
            or "retry-after" in response.headers))
        hint = None if rate_limited else {
            401: "check the App ID and private key, and that the App is still installed",
            403: "check the App's permissions (checks: write, contents: read, metadata: read)",
            404: "check that the App is installed on the repository",
            422: "GitHub refused the request body; this is a bug in Solstice, please report it",
        }.get(status)
        return cls(f"{forge} {what}: HTTP {status} {detail}".rstrip(), status=status,
                   retryable=status >= 500 or status in (401, 408) or rate_limited, hint=hint)

    @property
    def not_found(self) -> bool:
        return self.status == 404
