"""The GitHub REST calls the integration makes, authenticated as an App installation.

`GitHubApi` is also the `ForgeReader` of the shared fork policy (`fetch_file`, `can_write`).
Repository calls take a `Repo` whose `installation_id` names the installation to act as; each
is sent with a token scoped to that repository alone (see `AppAuth`).
"""
from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from common.messages import Repo
from github_integration.auth import AppAuth
from github_integration.errors import FORGE, GitHubApiError

API_VERSION = "2022-11-28"
USER_AGENT = "solstice-ci-github-integration"
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})


class HookDelivery(BaseModel):
    """One attempt to deliver a webhook of the App (`GET /app/hook/deliveries`). A
    redelivery is another attempt with the same `guid` (the `X-GitHub-Delivery` header)."""

    model_config = ConfigDict(extra="ignore")
    id: int
    guid: str
    status_code: int  # 0: no HTTP answer (timeout, connection refused)
    redelivery: bool
    delivered_at: datetime
    event: str

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status_code < 300


_DELIVERIES = TypeAdapter(list[HookDelivery])


def make_http_client(api_url: str, *, timeout: float = 10.0) -> httpx.AsyncClient:
    """The HTTP client for the GitHub API at `api_url`, with the headers GitHub asks for."""
    return httpx.AsyncClient(
        base_url=api_url.rstrip("/"),
        timeout=timeout,
        headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                 "User-Agent": USER_AGENT},
    )


def _installation(repo: Repo) -> int:
    if repo.installation_id is None:
        raise ValueError(f"{repo.full_name}: no GitHub App installation id to act as")
    return repo.installation_id


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
            raise GitHubApiError.unreachable(FORGE, what, exc) from exc

    async def request(self, what: str, method: str, url: str, *, repo: Repo,
                      ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        """Send one request as `repo`'s installation; raise `GitHubApiError` if not `ok`.

        A 401 means GitHub no longer honours the cached token (revoked, or clocks disagree on
        its expiry): the token is dropped and the request sent once more with a fresh one.
        """
        installation_id = _installation(repo)
        for first in (True, False):
            token = await self.auth.installation_token(installation_id, repo.full_name)
            response = await self._send(what, method, url, {"Authorization": f"token {token}"},
                                        **kwargs)
            if response.status_code == 401 and first:
                self.auth.invalidate(installation_id)
                continue
            break
        if response.status_code not in ok:
            raise GitHubApiError.from_response(FORGE, what, response)
        return response

    async def repo_installation(self, owner: str, name: str) -> int:
        """The id of the App's installation on `owner/name` (for webhooks that omit it)."""
        what = f"installation lookup for {owner}/{name}"
        response = await self._send(what, "GET", f"/repos/{owner}/{name}/installation",
                                    self.auth.app_headers())
        if response.status_code != 200:
            raise GitHubApiError.from_response(FORGE, what, response)
        return int(response.json()["id"])

    async def fetch_file(self, repo: Repo, path: str, ref: str) -> str | None:
        """The text of `path` at `ref` (a commit SHA or branch), or None if it does not exist."""
        what = f"contents of {path} at {ref} in {repo.full_name}"
        try:
            response = await self.request(what, "GET", f"/repos/{repo.full_name}/contents/{path}",
                                          repo=repo, params={"ref": ref})
        except GitHubApiError as exc:
            if exc.not_found:
                return None
            raise
        body = response.json()
        if not isinstance(body, dict) or body.get("type") != "file":
            return None  # a directory or a submodule of that name: no workflow file
        try:
            return base64.b64decode(body.get("content", "")).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise GitHubApiError(f"{FORGE} {what}: not UTF-8 text ({exc})", status=200,
                                 retryable=False, hint=f"save {path} as UTF-8") from exc

    async def can_write(self, repo: Repo, user: str) -> bool:
        """Whether `user` has write, maintain or admin permission on `repo`."""
        what = f"permission of {user} on {repo.full_name}"
        try:
            response = await self.request(
                what, "GET", f"/repos/{repo.full_name}/collaborators/{user}/permission", repo=repo)
        except GitHubApiError as exc:
            if exc.not_found:
                return False  # not a user GitHub knows
            raise
        return response.json().get("permission") in WRITE_PERMISSIONS

    async def comment(self, repo: Repo, number: int, body: str) -> None:
        """Comment on issue or pull request `number` (the App needs `issues: write`)."""
        await self.request(f"comment on #{number} of {repo.full_name}", "POST",
                           f"/repos/{repo.full_name}/issues/{number}/comments", repo=repo,
                           json={"body": body}, ok=(201,))

    async def create_check_run(self, repo: Repo, body: dict[str, Any]) -> int:
        """Create a check run; returns its id."""
        response = await self.request(f"check run creation on {repo.full_name}", "POST",
                                      f"/repos/{repo.full_name}/check-runs", json=body, repo=repo,
                                      ok=(201,))
        return int(response.json()["id"])

    async def update_check_run(self, repo: Repo, check_run_id: int, body: dict[str, Any]) -> None:
        """Update check run `check_run_id` (annotations in `body` are appended by GitHub)."""
        await self.request(f"check run {check_run_id} update on {repo.full_name}", "PATCH",
                           f"/repos/{repo.full_name}/check-runs/{check_run_id}", json=body,
                           repo=repo)

    async def hook_deliveries(self, *, cursor: str | None = None,
                              per_page: int = 100) -> tuple[list[HookDelivery], str | None]:
        """One page of the App's webhook deliveries, newest first, and the cursor of the next
        page (None on the last), from GitHub's `Link` header."""
        what = "list of the App's webhook deliveries"
        params: dict[str, str | int] = {"per_page": per_page}
        if cursor is not None:
            params["cursor"] = cursor
        response = await self._send(what, "GET", "/app/hook/deliveries",
                                    self.auth.app_headers(), params=params)
        if response.status_code != 200:
            raise GitHubApiError.from_response(FORGE, what, response)
        try:
            deliveries = _DELIVERIES.validate_json(response.content)
        except ValidationError as exc:
            raise GitHubApiError(f"{FORGE} {what}: malformed answer ({exc.error_count()} "
                                 "errors)", status=200, retryable=True) from exc
        following = response.links.get("next", {}).get("url")
        return deliveries, httpx.URL(following).params.get("cursor") if following else None

    async def redeliver(self, delivery_id: int) -> None:
        """Ask GitHub to deliver the webhook of delivery `delivery_id` again (202: queued)."""
        what = f"redelivery of webhook delivery {delivery_id}"
        response = await self._send(what, "POST", f"/app/hook/deliveries/{delivery_id}/attempts",
                                    self.auth.app_headers())
        if response.status_code != 202:
            raise GitHubApiError.from_response(FORGE, what, response)
