"""The GitHub REST calls the integration makes, authenticated as an App installation."""
from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx

from github_integration.auth import AppAuth
from github_integration.errors import GitHubApiError

API_VERSION = "2022-11-28"
USER_AGENT = "solstice-ci-github-integration"


def make_http_client(api_url: str, *, timeout: float = 10.0) -> httpx.AsyncClient:
    """The HTTP client for the GitHub API at `api_url`, with the headers GitHub asks for."""
    return httpx.AsyncClient(
        base_url=api_url.rstrip("/"),
        timeout=timeout,
        headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                 "User-Agent": USER_AGENT},
    )


class GitHubApi:
    """Repository calls made with an installation token; see `AppAuth` for the tokens."""

    def __init__(self, http: httpx.AsyncClient, auth: AppAuth) -> None:
        self._http = http
        self.auth = auth

    async def _send(self, what: str, method: str, url: str, headers: dict[str, str],
                    **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise GitHubApiError.unreachable(what, exc) from exc

    async def request(self, what: str, method: str, url: str, *, installation_id: int,
                      ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        """Send one request as installation `installation_id`; raise `GitHubApiError` if not `ok`.

        A 401 means GitHub no longer honours the cached token (revoked, or clocks disagree on
        its expiry): the token is dropped and the request sent once more with a fresh one.
        """
        for first in (True, False):
            token = await self.auth.installation_token(installation_id)
            response = await self._send(what, method, url, {"Authorization": f"token {token}"},
                                        **kwargs)
            if response.status_code == 401 and first:
                self.auth.invalidate(installation_id)
                continue
            break
        if response.status_code not in ok:
            raise GitHubApiError.from_response(what, response)
        return response

    async def repo_installation(self, owner: str, repo: str) -> int:
        """The id of the App's installation on `owner/repo` (for webhooks that omit it)."""
        what = f"installation lookup for {owner}/{repo}"
        response = await self._send(what, "GET", f"/repos/{owner}/{repo}/installation",
                                    self.auth.app_headers())
        if response.status_code != 200:
            raise GitHubApiError.from_response(what, response)
        return int(response.json()["id"])

    async def file_at(self, owner: str, repo: str, path: str, ref: str, *,
                      installation_id: int) -> str | None:
        """The text of `path` at `ref` (a commit SHA or branch), or None if it does not exist."""
        what = f"contents of {path} at {ref} in {owner}/{repo}"
        try:
            response = await self.request(what, "GET", f"/repos/{owner}/{repo}/contents/{path}",
                                          installation_id=installation_id, params={"ref": ref})
        except GitHubApiError as exc:
            if exc.not_found:
                return None
            raise
        body = response.json()
        if not isinstance(body, dict) or body.get("type") != "file":
            return None
        try:
            return base64.b64decode(body.get("content", ""), validate=False).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise GitHubApiError(f"GitHub {what}: not UTF-8 text ({exc})", status=200,
                                 retryable=False, hint=f"save {path} as UTF-8") from exc

    async def permission(self, owner: str, repo: str, username: str, *,
                         installation_id: int) -> str:
        """`admin`, `write`, `read` or `none`: what `username` may do on `owner/repo`."""
        what = f"permission of {username} on {owner}/{repo}"
        try:
            response = await self.request(
                what, "GET", f"/repos/{owner}/{repo}/collaborators/{username}/permission",
                installation_id=installation_id)
        except GitHubApiError as exc:
            if exc.not_found:
                return "none"
            raise
        return str(response.json().get("permission", "none"))

    async def create_check_run(self, owner: str, repo: str, body: dict[str, Any], *,
                               installation_id: int) -> int:
        """Create a check run; returns its id."""
        response = await self.request(f"check run creation on {owner}/{repo}", "POST",
                                      f"/repos/{owner}/{repo}/check-runs", json=body,
                                      installation_id=installation_id, ok=(201,))
        return int(response.json()["id"])

    async def update_check_run(self, owner: str, repo: str, check_run_id: int,
                               body: dict[str, Any], *, installation_id: int) -> None:
        """Update check run `check_run_id` (annotations in `body` are appended by GitHub)."""
        await self.request(f"check run {check_run_id} update on {owner}/{repo}", "PATCH",
                           f"/repos/{owner}/{repo}/check-runs/{check_run_id}", json=body,
                           installation_id=installation_id)
