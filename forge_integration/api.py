"""The few Forgejo/Gitea API calls the integration makes (Gitea's API, which Forgejo keeps).

- `GET /repos/{owner}/{repo}/contents/{path}?ref=`: a file at a commit or branch (base64);
- `GET /repos/{owner}/{repo}/collaborators/{user}/permission`: `permission` is one of
  none, read, write, admin, owner. Forgejo answers 403 unless the token's user administers
  the repository; the integration then treats the author as without write access;
- `GET /repos/{owner}/{repo}` and `GET /repos/{owner}/{repo}/branches/{branch}` for manual runs;
- `POST /repos/{owner}/{repo}/statuses/{sha}` with `state` (pending, success, error, failure,
  warning), `context`, `description`, `target_url`.
Authentication: `Authorization: token <token>`. Errors raise `ForgeApiError`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any
from urllib.parse import quote

import httpx

from common.forge.errors import ForgeApiError
from common.messages import Repo

log = logging.getLogger(__name__)

WRITE_PERMISSIONS = frozenset({"write", "admin", "owner"})


class ForgejoApi:
    """A client of one Forgejo or Gitea instance; `forge` names it in errors."""

    def __init__(self, forge: str, api_url: str, token: str, *, timeout: float = 10.0,
                 max_in_flight: int = 8,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.forge = forge
        self.api_url = api_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "solstice-ci"}
        if token:
            headers["Authorization"] = f"token {token}"
        # httpcore's pool rescans every connection for every queued request, which costs more
        # CPU than the request itself once dozens wait; a semaphore in front keeps its queue
        # empty and its connection list short.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._client = httpx.AsyncClient(base_url=self.api_url, headers=headers, timeout=timeout,
                                         transport=transport,
                                         limits=httpx.Limits(max_connections=max_in_flight,
                                                             max_keepalive_connections=max_in_flight))

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, what: str, *,
                       params: dict[str, str] | None = None,
                       json: dict[str, Any] | None = None,
                       missing_ok: tuple[int, ...] = ()) -> httpx.Response | None:
        try:
            async with self._slots:
                response = await self._client.request(method, path, params=params, json=json)
        except httpx.TransportError as exc:
            raise ForgeApiError.unreachable(self.forge, what, exc) from exc
        if response.status_code in missing_ok:
            return None
        if response.is_error:
            raise ForgeApiError.from_response(self.forge, what, response)
        return response

    @staticmethod
    def _repo_path(repo: Repo) -> str:
        return f"/repos/{quote(repo.owner, safe='')}/{quote(repo.name, safe='')}"

    async def fetch_file(self, repo: Repo, path: str, ref: str) -> str | None:
        """The text of `path` at `ref`, None if the file (or the ref) does not exist."""
        what = f"reading {path} at {ref} in {repo.full_name}"
        response = await self._request("GET", f"{self._repo_path(repo)}/contents/{quote(path)}",
                                       what, params={"ref": ref}, missing_ok=(404,))
        if response is None:
            return None
        body = response.json()
        if not isinstance(body, dict) or body.get("type") != "file":
            return None  # a directory of that name: no workflow file
        try:
            return base64.b64decode(body.get("content") or "").decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ForgeApiError(f"{self.forge} {what}: the file is not UTF-8 text ({exc})",
                                status=response.status_code, retryable=False) from exc

    async def can_write(self, repo: Repo, user: str) -> bool:
        """Whether `user` has write access or more on `repo`."""
        what = f"reading {user}'s permission on {repo.full_name}"
        response = await self._request(
            "GET", f"{self._repo_path(repo)}/collaborators/{quote(user, safe='')}/permission",
            what, missing_ok=(403, 404))
        if response is None:
            log.warning("cannot read a pull request author's permission; treating as untrusted",
                        extra={"repo": repo.full_name, "user": user,
                               "hint": "give the integration's token admin access to the repository"})
            return False
        return response.json().get("permission") in WRITE_PERMISSIONS

    async def get_repo(self, owner: str, name: str) -> dict[str, Any] | None:
        """The repository's API object, None if there is no such repository."""
        response = await self._request(
            "GET", f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}",
            f"reading repository {owner}/{name}", missing_ok=(404,))
        return None if response is None else response.json()

    async def branch_head(self, repo: Repo, branch: str) -> str | None:
        """The commit sha `branch` points at, None if there is no such branch."""
        response = await self._request(
            "GET", f"{self._repo_path(repo)}/branches/{quote(branch, safe='')}",
            f"reading branch {branch} of {repo.full_name}", missing_ok=(404,))
        return None if response is None else response.json()["commit"]["id"]

    async def comment(self, repo: Repo, number: int, body: str) -> None:
        """Comment on issue or pull request `number` (the token needs `write:issue`)."""
        await self._request("POST", f"{self._repo_path(repo)}/issues/{number}/comments",
                            f"commenting on #{number} of {repo.full_name}", json={"body": body})

    async def create_status(self, owner: str, name: str, sha: str, body: dict[str, str]) -> None:
        """Set one commit status (a later one with the same `context` replaces it on the forge)."""
        await self._request(
            "POST", f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}/statuses/{sha}",
            f"setting status {body.get('context')} on {owner}/{name}@{sha[:12]}", json=body)
