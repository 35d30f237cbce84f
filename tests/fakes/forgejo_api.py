"""A fake Forgejo/Gitea API (`/api/v1`) on a real loopback HTTP server, for the integration's tests.

It serves the endpoints `forge_integration` uses, with the forge's documented rules:
- every request needs `Authorization: token <token>` (401 otherwise);
- `GET /repos/{o}/{r}`, `GET /repos/{o}/{r}/branches/{b}`: repository and branch objects;
- `GET /repos/{o}/{r}/contents/{path}?ref=`: a file at a commit sha or a branch, base64 as the
  forge sends it; 404 for an unknown ref or path;
- `GET /repos/{o}/{r}/collaborators/{u}/permission`: `permission` none/read/write/admin/owner;
  403 unless the token's user administers the repository (as Forgejo does), 404 for an
  unknown user;
- `POST /repos/{o}/{r}/statuses/{sha}`: `CreateStatusOption`: `state` one of pending, success,
  error, failure, warning; `context`, `description`, `target_url` strings (an http(s) URL or
  empty); other fields, a malformed sha or body are answered 422 and change nothing. Accepted
  statuses are kept in order in `statuses`;
- `POST /repos/{o}/{r}/issues/{index}/comments`: `CreateIssueCommentOption` (`body`), kept
  in `comments`;
- git over smart HTTP (`git http-backend`, see `tests/fakes/git_http.py`) at
  `/{owner}/{name}.git` for a fake made with a `git_root`: a `private` repository only with
  `Authorization: Basic` whose password is a token of `read_tokens` covering it (any user
  name: the forges authenticate a token given as the password whatever the name); others
  also anonymously.

`fail(times, status=..., delay=..., path_contains=...)` answers the next matching requests with
an error (or holds them `delay` seconds first: a hanging forge, for client timeouts).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.fakes.git_http import GitHttp

STATES = {"pending", "success", "error", "failure", "warning"}
STATUS_FIELDS = {"state", "context", "description", "target_url"}
PERMISSIONS = {"none", "read", "write", "admin", "owner"}
SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class FakeRepo:
    owner: str
    name: str
    id: int
    default_branch: str = "main"
    branches: dict[str, str] = field(default_factory=dict)  # branch -> sha
    files: dict[tuple[str, str], str] = field(default_factory=dict)  # (sha, path) -> text
    permissions: dict[str, str] = field(default_factory=dict)  # login -> permission
    token_is_admin: bool = True  # whether the integration's token may read permissions
    private: bool = False


@dataclass(frozen=True)
class Status:
    owner: str
    repo: str
    sha: str
    state: str
    context: str
    description: str
    target_url: str


@dataclass(frozen=True)
class Comment:
    owner: str
    repo: str
    index: int
    body: str


@dataclass
class _Fault:
    status: int
    delay: float
    path_contains: str


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "url": "https://forgejo.org/api/swagger"},
                        status_code=status)


class FakeForgejo:
    """Use as `async with FakeForgejo(token) as forge:`; `forge.url` is the site root."""

    def __init__(self, token: str = "forge-token", *, git_root: Path | None = None) -> None:
        self.token = token
        self.git = (GitHttp(git_root, lambda key: getattr(self.repos.get(key), 'private', True),
                            lambda token, key: key in self.read_tokens.get(token, set()))
                    if git_root is not None else None)
        # Read tokens for git: token -> the `owner/name`s (lower case) it reads.
        self.read_tokens: dict[str, set[str]] = {}
        self.comments: list[Comment] = []
        self.repos: dict[str, FakeRepo] = {}
        self.users: set[str] = set()
        self.statuses: list[Status] = []
        self.requests: list[tuple[str, str]] = []
        self.rejected: list[tuple[int, str]] = []  # (status, message) of refused status posts
        self._faults: list[_Fault] = []
        self._stopping = asyncio.Event()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"

    # ---- set-up helpers -------------------------------------------------------------------

    def add_repo(self, owner: str, name: str, *, repo_id: int = 1, default_branch: str = "main",
                 branches: dict[str, str] | None = None,
                 files: dict[tuple[str, str], str] | None = None,
                 permissions: dict[str, str] | None = None, token_is_admin: bool = True,
                 private: bool = False) -> FakeRepo:
        repo = FakeRepo(owner, name, repo_id, default_branch, dict(branches or {}),
                        dict(files or {}), dict(permissions or {}), token_is_admin, private)
        self.repos[f"{owner}/{name}".lower()] = repo
        self.users |= {owner, *repo.permissions}
        return repo

    def fail(self, times: int = 1, *, status: int = 500, delay: float = 0.0,
             path_contains: str = "") -> None:
        """Answer the next `times` requests whose path contains `path_contains` with `status`
        (after holding each `delay` seconds; status 0 answers normally, only late)."""
        self._faults += [_Fault(status, delay, path_contains) for _ in range(times)]

    def heal(self) -> None:
        """Drop the faults not yet triggered."""
        self._faults.clear()

    def statuses_for(self, sha: str, context: str | None = None) -> list[Status]:
        return [s for s in self.statuses if s.sha == sha and context in (None, s.context)]

    # ---- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> FakeForgejo:
        prefix = "/api/v1/repos/{owner}/{repo}"
        app = Starlette(routes=[
            Route(prefix, self._repo, methods=["GET"]),
            Route(prefix + "/branches/{branch:path}", self._branch, methods=["GET"]),
            Route(prefix + "/contents/{path:path}", self._contents, methods=["GET"]),
            Route(prefix + "/collaborators/{user}/permission", self._permission, methods=["GET"]),
            Route(prefix + "/statuses/{sha}", self._create_status, methods=["POST"]),
            Route(prefix + "/issues/{index:int}/comments", self._create_comment, methods=["POST"]),
            *([Route("/{owner}/{name}.git/{rest:path}", self.git.handle, methods=["GET", "POST"])]
              if self.git is not None else []),
        ])
        guarded = self._guard(app)
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # without it every answer waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(guarded, log_level="warning", lifespan="off",
                                                     access_log=False, log_config=None))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task

    # ---- middleware: auth and injected faults ---------------------------------------------

    def _guard(self, app: ASGIApp) -> ASGIApp:
        """Record the request, inject the next matching fault, check the token, then route.

        A plain ASGI wrapper: Starlette's BaseHTTPMiddleware costs a task per request, which
        shows in the ingestion benchmark."""
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            path = scope["path"]
            self.requests.append((scope["method"], path))
            fault = next((f for f in self._faults if f.path_contains in path), None)
            if fault is not None:
                self._faults.remove(fault)
                if fault.delay:
                    try:
                        await asyncio.wait_for(self._stopping.wait(), fault.delay)
                    except TimeoutError:
                        pass
                if fault.status:
                    await _error(fault.status, "Internal Server Error (injected)")(scope, receive, send)
                    return
            is_git = self.git is not None and self.git.matches(path)
            if not is_git and Headers(scope=scope).get("authorization") != f"token {self.token}":
                await _error(401, "token is required")(scope, receive, send)
                return
            await app(scope, receive, send)
        return guarded

    def _find(self, request: Request) -> FakeRepo | None:
        return self.repos.get(f"{request.path_params['owner']}/{request.path_params['repo']}".lower())

    # ---- endpoints ------------------------------------------------------------------------

    async def _repo(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None:
            return _error(404, "repository does not exist")
        return JSONResponse({
            "id": repo.id, "name": repo.name, "full_name": f"{repo.owner}/{repo.name}",
            "owner": {"login": repo.owner, "username": repo.owner},
            "clone_url": f"{self.url}/{repo.owner}/{repo.name}.git",
            "html_url": f"{self.url}/{repo.owner}/{repo.name}",
            "default_branch": repo.default_branch})

    async def _branch(self, request: Request) -> Response:
        repo = self._find(request)
        branch = request.path_params["branch"]
        if repo is None or branch not in repo.branches:
            return _error(404, f"branch {branch} does not exist")
        return JSONResponse({"name": branch, "commit": {"id": repo.branches[branch]}})

    async def _contents(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None:
            return _error(404, "repository does not exist")
        ref = request.query_params.get("ref") or repo.default_branch
        sha = repo.branches.get(ref, ref)
        path = request.path_params["path"]
        text = repo.files.get((sha, path))
        if text is None:
            return _error(404, f"object does not exist [id: {ref}, rel_path: {path}]")
        data = text.encode()
        return JSONResponse({
            "type": "file", "encoding": "base64", "name": path.rsplit("/", 1)[-1], "path": path,
            "size": len(data), "sha": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
            "content": base64.b64encode(data).decode()})

    async def _permission(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None:
            return _error(404, "repository does not exist")
        if not repo.token_is_admin:
            return _error(403, "Only admins can query all permissions, repo admins can query all "
                               "repo permissions, collaborators can query only their own")
        user = request.path_params["user"]
        if user not in self.users:
            return _error(404, f"user redirect does not exist [name: {user}]")
        permission = "owner" if user == repo.owner else repo.permissions.get(user, "read")
        return JSONResponse({"permission": permission, "role_name": permission,
                             "user": {"login": user}})

    async def _create_status(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None:
            return _error(404, "repository does not exist")
        sha = request.path_params["sha"]
        try:
            body = await request.json()
        except ClientDisconnect:
            return _error(400, "client went away")  # a timed-out client: nothing recorded
        except ValueError:
            return self._reject(422, "body is not JSON")
        problem = self._status_problem(sha, body)
        if problem:
            return self._reject(422, problem)
        status = Status(repo.owner, repo.name, sha, body["state"], body.get("context", "default"),
                        body.get("description", ""), body.get("target_url", ""))
        self.statuses.append(status)
        return JSONResponse({"id": len(self.statuses), "status": status.state,
                             "context": status.context, "description": status.description,
                             "target_url": status.target_url}, status_code=201)

    async def _create_comment(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None:
            return _error(404, "repository does not exist")
        try:
            body = await request.json()
        except ValueError:
            return _error(422, "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
            return _error(422, "[Body]: Required")
        comment = Comment(repo.owner, repo.name, request.path_params["index"], body["body"])
        self.comments.append(comment)
        return JSONResponse({"id": len(self.comments), "body": comment.body}, status_code=201)

    def _reject(self, status: int, message: str) -> Response:
        self.rejected.append((status, message))
        return _error(status, message)

    @staticmethod
    def _status_problem(sha: str, body: Any) -> str | None:
        if not SHA.match(sha):
            return f"sha {sha!r} is not a full commit id"
        if not isinstance(body, dict):
            return "body must be a CreateStatusOption object"
        unknown = set(body) - STATUS_FIELDS
        if unknown:
            return f"unknown fields {sorted(unknown)}"
        if body.get("state") not in STATES:
            return f"state must be one of {sorted(STATES)}, not {body.get('state')!r}"
        for name in ("context", "description", "target_url"):
            if name in body and not isinstance(body[name], str):
                return f"{name} must be a string"
        target = body.get("target_url", "")
        if target and not target.startswith(("http://", "https://")):
            return f"target_url {target!r} is not an http(s) URL"
        return None
