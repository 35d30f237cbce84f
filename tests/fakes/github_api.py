"""A fake GitHub REST API on a real loopback HTTP server, for the GitHub App integration's tests.

It implements the endpoints the integration uses, with GitHub's documented rules:
- `POST /app/installations/{id}/access_tokens` and `GET /repos/{o}/{r}/installation` need the
  App's RS256 JWT (checked against the App's public key: `iss` = App ID, `iat` not in the
  future, `exp` at most 10 minutes ahead of `iat` and not passed); tokens expire after
  `token_lifetime` seconds of the fake's clock. A body `{"repositories": [names]}` scopes the
  token to those repositories of the installation, which the answer lists; a name the
  installation has no repository of gets 422, as on GitHub;
- repository endpoints need a live installation token of the installation owning the repo
  (and, for a scoped token, naming it);
- `POST`/`PATCH .../check-runs` validate the body: documented fields only, `actions` (at most
  3; label, description, identifier of at most 20, 40, 20 characters), `status` and
  `conclusion` values, `conclusion` required with `status: completed` or `completed_at`,
  `output.title`/`summary` required, summary and text at most 65,535 characters, at most 50
  annotations per request, each annotation's required fields and levels. PATCH appends
  annotations, as GitHub does. Invalid bodies get 422 and change nothing;
- `GET .../contents/{path}?ref=` serves files from memory, base64 as GitHub does;
- `GET .../collaborators/{user}/permission`;
- installation permissions: each installation has `installation_permissions` (by default
  checks and issues write, contents and metadata read); a token request's `permissions` must
  stay within them (else 422) and the token holds just those plus `metadata: read`. An
  endpoint the token's permissions do not cover answers 403 "Resource not accessible by
  integration": contents and git need `contents: read`, check runs `checks: write`, issue
  comments `issues: write`;
- `POST .../issues/{number}/comments` keeps the comment in `comments`;
- `DELETE /installation/token` revokes the token it is sent with (204; 401 for a token
  already expired or revoked), listed in `revoked`;
- git over smart HTTP (`git http-backend`, see `tests/fakes/git_http.py`) at
  `/{owner}/{name}.git` for repositories with a `git_root`: a `private` repository only with
  `Authorization: Basic` whose password is a live installation token reaching it with
  `contents: read` (any user name, as GitHub's `x-access-token`); others also anonymously.

`fail(times, status=...)` answers the next matching requests with an error status, and
`fail(times, delay=...)` holds them that long (for client timeouts).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.forge.signature import GITHUB_PREFIX, sign
from common.http import running
from tests.fakes.git_http import GitHttp

STATUSES = {"queued", "in_progress", "completed"}
CONCLUSIONS = {"action_required", "cancelled", "failure", "neutral", "success", "skipped",
               "timed_out"}
ANNOTATION_LEVELS = {"notice", "warning", "failure"}
TEXT_LIMIT = 65535
ANNOTATIONS_PER_REQUEST = 50
CHECK_RUN_FIELDS = {"name", "head_sha", "details_url", "external_id", "status", "started_at",
                    "conclusion", "completed_at", "output", "actions"}
OUTPUT_FIELDS = {"title", "summary", "text", "annotations", "images"}
DELIVERY_TIMEOUT = 10.0  # GitHub gives up on a webhook not answered within 10 s
DELIVERY_RETENTION = 3 * 86400  # and keeps its deliveries' log 3 days
HOOK_ID = 1
ANNOTATION_FIELDS = {"path", "start_line", "end_line", "start_column", "end_column",
                     "annotation_level", "message", "title", "raw_details"}


class Invalid(Exception):
    """A request body GitHub would refuse with 422."""


@dataclass
class FakeRepo:
    owner: str
    name: str
    # On GitHub one App has one installation per account; the octokit fixtures name two for
    # the same repository, so the fake lets a repository belong to several.
    installation_ids: set[int]
    files: dict[tuple[str, str], str] = field(default_factory=dict)  # (ref, path) -> text
    branches: dict[str, str] = field(default_factory=dict)  # branch -> sha
    permissions: dict[str, str] = field(default_factory=dict)  # login -> admin/write/read
    private: bool = False


DEFAULT_INSTALLATION_PERMISSIONS = {"checks": "write", "contents": "read", "metadata": "read",
                                    "issues": "write"}
LEVELS = {"read": 1, "write": 2}


@dataclass(frozen=True)
class Grant:
    """An installation token: its installation, expiry, permissions and, when scoped, its
    repositories."""

    installation_id: int
    expires_at: float
    repositories: frozenset[str] | None = None  # lower-case owner/name; None: all of them
    permissions: tuple[tuple[str, str], ...] = tuple(DEFAULT_INSTALLATION_PERMISSIONS.items())

    def allows(self, name: str, level: str) -> bool:
        held = dict(self.permissions).get(name)
        return held is not None and LEVELS[held] >= LEVELS[level]


@dataclass(frozen=True)
class Comment:
    owner: str
    repo: str
    number: int
    body: str


@dataclass
class CheckRun:
    id: int
    owner: str
    repo: str
    name: str
    head_sha: str
    status: str = "queued"
    conclusion: str | None = None
    details_url: str | None = None
    external_id: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # every accepted body, in order


@dataclass
class HookDelivery:
    """One attempt at delivering a webhook, with what was sent (to send it again)."""

    id: int
    guid: str
    event: str
    action: str | None
    status_code: int  # 0: no answer
    redelivery: bool
    delivered_at: float
    duration: float
    headers: dict[str, str]
    body: bytes

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "guid": self.guid, "event": self.event, "action": self.action,
                "status_code": self.status_code, "redelivery": self.redelivery,
                "status": "OK" if 200 <= self.status_code < 300 else
                f"Invalid HTTP Response: {self.status_code}" if self.status_code else "timed out",
                "delivered_at": datetime.fromtimestamp(self.delivered_at, UTC)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "duration": round(self.duration, 2), "installation_id": None,
                "repository_id": None}


@dataclass
class _Fault:
    status: int
    delay: float
    path_contains: str
    after: int  # matching requests to let through first


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message,
                         "documentation_url": "https://docs.github.com/rest"}, status)


def _iso(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise Invalid(f"{name} must be an ISO 8601 timestamp")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Invalid(f"{name} is not an ISO 8601 timestamp: {value!r}") from exc


def _validate_annotation(index: int, annotation: Any) -> None:
    where = f"output.annotations[{index}]"
    if not isinstance(annotation, dict):
        raise Invalid(f"{where} must be an object")
    unknown = set(annotation) - ANNOTATION_FIELDS
    if unknown:
        raise Invalid(f"{where} has unknown fields {sorted(unknown)}")
    for name in ("path", "message", "annotation_level"):
        if not isinstance(annotation.get(name), str) or not annotation[name]:
            raise Invalid(f"{where}.{name} is required")
    for name in ("start_line", "end_line"):
        if not isinstance(annotation.get(name), int) or annotation[name] < 1:
            raise Invalid(f"{where}.{name} is required and must be a positive integer")
    if annotation["end_line"] < annotation["start_line"]:
        raise Invalid(f"{where}.end_line is before start_line")
    if annotation["annotation_level"] not in ANNOTATION_LEVELS:
        raise Invalid(f"{where}.annotation_level must be one of {sorted(ANNOTATION_LEVELS)}")
    if ("start_column" in annotation or "end_column" in annotation) \
            and annotation["start_line"] != annotation["end_line"]:
        raise Invalid(f"{where}: columns are only allowed when start_line equals end_line")
    for name in ("message", "raw_details"):
        if len(annotation.get(name) or "") > TEXT_LIMIT:
            raise Invalid(f"{where}.{name} is longer than {TEXT_LIMIT} characters")


def _validate_actions(actions: Any) -> None:
    """GitHub's rules for requested actions: at most 3, each label <= 20 characters,
    description <= 40, identifier <= 20, all three required."""
    if not isinstance(actions, list) or len(actions) > 3:
        raise Invalid("actions must be an array of at most 3 objects")
    for index, action in enumerate(actions):
        if not isinstance(action, dict) or set(action) != {"label", "description", "identifier"}:
            raise Invalid(f"actions[{index}] needs exactly label, description and identifier")
        for name, limit in (("label", 20), ("description", 40), ("identifier", 20)):
            value = action[name]
            if not isinstance(value, str) or not value or len(value) > limit:
                raise Invalid(f"actions[{index}].{name} must be 1 to {limit} characters")


def validate_check_run_body(body: Any, *, create: bool) -> None:
    """Raise `Invalid` for a body GitHub's check-runs endpoints would refuse."""
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    unknown = set(body) - CHECK_RUN_FIELDS
    if unknown:
        raise Invalid(f"unknown fields {sorted(unknown)}")
    if create:
        for name in ("name", "head_sha"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise Invalid(f"{name} is required")
    if "status" in body and body["status"] not in STATUSES:
        raise Invalid(f"status must be one of {sorted(STATUSES)}")
    if "conclusion" in body and body["conclusion"] not in CONCLUSIONS:
        raise Invalid(f"conclusion must be one of {sorted(CONCLUSIONS)}")
    if (body.get("status") == "completed" or "completed_at" in body) and "conclusion" not in body:
        raise Invalid("conclusion is required when status is completed or completed_at is given")
    for name in ("started_at", "completed_at"):
        if name in body:
            _iso(body[name], name)
    for name in ("details_url", "external_id", "name"):
        if name in body and not isinstance(body[name], str):
            raise Invalid(f"{name} must be a string")
    if "details_url" in body and not body["details_url"].startswith(("http://", "https://")):
        raise Invalid("details_url must be an http(s) URL")
    if "actions" in body:
        _validate_actions(body["actions"])
    if "output" in body:
        output = body["output"]
        if not isinstance(output, dict):
            raise Invalid("output must be an object")
        unknown = set(output) - OUTPUT_FIELDS
        if unknown:
            raise Invalid(f"output has unknown fields {sorted(unknown)}")
        for name in ("title", "summary"):
            if not isinstance(output.get(name), str) or not output[name]:
                raise Invalid(f"output.{name} is required")
        for name in ("summary", "text"):
            if len(output.get(name) or "") > TEXT_LIMIT:
                raise Invalid(f"output.{name} is longer than {TEXT_LIMIT} characters")
        annotations = output.get("annotations", [])
        if not isinstance(annotations, list):
            raise Invalid("output.annotations must be an array")
        if len(annotations) > ANNOTATIONS_PER_REQUEST:
            raise Invalid(f"at most {ANNOTATIONS_PER_REQUEST} annotations per request")
        for index, annotation in enumerate(annotations):
            _validate_annotation(index, annotation)


class FakeGitHub:
    """The fake GitHub API. Use as `async with FakeGitHub(...) as gh:`; `gh.url` is its root."""

    def __init__(self, app_id: int, public_key: rsa.RSAPublicKey, *,
                 token_lifetime: float = 3600.0, clock: Callable[[], float] = time.time,
                 git_root: Path | None = None) -> None:
        self.app_id = app_id
        self.git = (GitHttp(git_root, lambda key: getattr(self.repos.get(key), 'private', True), self._token_reads)
                    if git_root is not None else None)
        self.installation_permissions: dict[int, dict[str, str]] = {}
        self.comments: list[Comment] = []
        self.revoked: list[str] = []  # tokens revoked through DELETE /installation/token
        self.public_key = public_key
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.repos: dict[str, FakeRepo] = {}
        self.check_runs: dict[int, CheckRun] = {}
        self.tokens: dict[str, Grant] = {}
        self.tokens_issued = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received
        self._ids = itertools.count(1000)
        self._faults: list[_Fault] = []
        self.deliveries: list[HookDelivery] = []  # oldest first
        self.webhook_url = ""
        self.webhook_secret = ""
        self._redeliveries: set[asyncio.Task[HookDelivery]] = set()
        self._stopping = asyncio.Event()
        self._serving: contextlib.AbstractAsyncContextManager[str] | None = None
        self.url = ""

    # ---- set-up helpers for tests -------------------------------------------------------

    def add_repo(self, owner: str, name: str, *, installation_ids: set[int],
                 files: dict[tuple[str, str], str] | None = None,
                 branches: dict[str, str] | None = None,
                 permissions: dict[str, str] | None = None, private: bool = False) -> FakeRepo:
        repo = FakeRepo(owner, name, set(installation_ids), dict(files or {}),
                        dict(branches or {}), dict(permissions or {}), private)
        self.repos[f"{owner}/{name}".lower()] = repo
        return repo

    def fail(self, times: int = 1, *, status: int = 500, delay: float = 0.0,
             path_contains: str = "", after: int = 0) -> None:
        """Answer `times` requests whose path contains `path_contains` with `status`, once
        `after` such requests went through normally; hold each `delay` seconds first (with
        status 0 the request is then answered normally, only late)."""
        self._faults += [_Fault(status, delay, path_contains, after if i == 0 else 0)
                         for i in range(times)]

    def heal(self) -> None:
        """Drop the faults not yet triggered."""
        self._faults.clear()

    def hook(self, url: str, secret: str) -> None:
        """Set the App's webhook: where deliveries go and the secret that signs them."""
        self.webhook_url, self.webhook_secret = url, secret

    async def deliver(self, event: str, body: bytes) -> HookDelivery:
        """Send a webhook to the App's URL as GitHub does; the attempt as recorded."""
        signature = sign(self.webhook_secret, body, prefix=GITHUB_PREFIX)
        headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/fake",
                   "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
                   "X-GitHub-Hook-ID": str(HOOK_ID),
                   "X-GitHub-Hook-Installation-Target-Type": "integration",
                   "X-GitHub-Hook-Installation-Target-ID": str(self.app_id),
                   "X-Hub-Signature-256": signature}
        return await self._send(headers, body, redelivery=False)

    async def _send(self, headers: dict[str, str], body: bytes, *,
                    redelivery: bool) -> HookDelivery:
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
                response = await client.post(self.webhook_url, content=body, headers=headers)
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        try:
            action = json.loads(body).get("action")
        except (ValueError, AttributeError):
            action = None
        delivery = HookDelivery(next(self._ids), headers["X-GitHub-Delivery"],
                                headers["X-GitHub-Event"], action, status, redelivery,
                                self.clock(), time.monotonic() - started, headers, body)
        self.deliveries.append(delivery)
        return delivery

    async def settle(self) -> list[HookDelivery]:
        """Wait for the redeliveries asked for so far; their attempts."""
        return list(await asyncio.gather(*self._redeliveries))

    def runs_named(self, name: str) -> list[CheckRun]:
        return [run for run in self.check_runs.values() if run.name == name]

    # ---- server lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> FakeGitHub:
        app = Starlette(routes=[
            Route("/app/installations/{installation_id:int}/access_tokens", self._access_token,
                  methods=["POST"]),
            Route("/app/hook/deliveries", self._list_deliveries, methods=["GET"]),
            Route("/app/hook/deliveries/{delivery_id:int}/attempts", self._redeliver,
                  methods=["POST"]),
            Route("/repos/{owner}/{repo}/installation", self._repo_installation, methods=["GET"]),
            Route("/installation/token", self._revoke_token, methods=["DELETE"]),
            Route("/repos/{owner}/{repo}/contents/{path:path}", self._contents, methods=["GET"]),
            Route("/repos/{owner}/{repo}/collaborators/{user}/permission", self._permission,
                  methods=["GET"]),
            Route("/repos/{owner}/{repo}/check-runs", self._create_check_run, methods=["POST"]),
            Route("/repos/{owner}/{repo}/check-runs/{check_run_id:int}", self._update_check_run,
                  methods=["PATCH"]),
            Route("/repos/{owner}/{repo}/issues/{number:int}/comments", self._create_comment,
                  methods=["POST"]),
            *([Route("/{owner}/{name}.git/{rest:path}", self.git.handle, methods=["GET", "POST"])]
              if self.git is not None else []),
        ], middleware=[Middleware(BaseHTTPMiddleware, dispatch=self._inject_faults)])
        self._serving = running(app)
        self.url = await self._serving.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()  # held (delayed) requests answer now, so shutdown is quick
        await asyncio.gather(*self._redeliveries, return_exceptions=True)
        assert self._serving is not None
        await self._serving.__aexit__(None, None, None)

    # ---- middleware and auth --------------------------------------------------------------

    async def _inject_faults(self, request: Request, call_next: Any) -> Any:
        self.requests.append((request.method, request.url.path))
        fault = next((f for f in self._faults if f.path_contains in request.url.path), None)
        if fault is not None and fault.after:
            fault.after -= 1
            fault = None
        if fault is None:
            return await call_next(request)
        self._faults.remove(fault)
        if fault.delay:
            try:
                await asyncio.wait_for(self._stopping.wait(), fault.delay)
            except TimeoutError:
                pass
        if fault.status:
            return _error(fault.status, "Server Error (injected)")
        return await call_next(request)

    def _app_jwt_problem(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return "A JSON web token could not be decoded"
        try:
            claims = jwt.decode(header[7:], self.public_key, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"], "verify_exp": False,
                                         "verify_iat": False})
        except jwt.InvalidTokenError as exc:
            return f"A JSON web token could not be decoded ({exc})"
        now = self.clock()
        if str(claims["iss"]) != str(self.app_id):
            return "'Issuer' claim ('iss') must be the App ID"
        if claims["iat"] > now + 5:
            return "'Issued at' claim ('iat') must be an Integer representing a time in the past"
        if claims["exp"] - claims["iat"] > 600 or claims["exp"] > now + 600:
            return "'Expiration time' claim ('exp') is too far in the future"
        if claims["exp"] <= now:
            return "'Expiration time' claim ('exp') must be a numeric value representing the future time"
        return None

    def _repo_for(self, request: Request,
                  need: tuple[str, str] = ("metadata", "read")) -> FakeRepo | JSONResponse:
        """The repo of the path if the request's installation token may use it with the
        permission `need`, else an error."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        grant = self.tokens.get(token) if scheme.lower() in ("token", "bearer") else None
        if grant is None or grant.expires_at <= self.clock():
            return _error(401, "Bad credentials")
        key = f"{request.path_params['owner']}/{request.path_params['repo']}".lower()
        repo = self.repos.get(key)
        if repo is None or grant.installation_id not in repo.installation_ids \
                or (grant.repositories is not None and key not in grant.repositories):
            return _error(404, "Not Found")
        if not grant.allows(*need):
            return _error(403, "Resource not accessible by integration")
        return repo

    def _token_reads(self, token: str, key: str) -> bool:
        """Whether installation token `token` may clone `key` (live, reaching it, contents)."""
        repo = self.repos.get(key)
        grant = self.tokens.get(token)
        return (repo is not None and grant is not None and grant.expires_at > self.clock()
                and grant.installation_id in repo.installation_ids
                and (grant.repositories is None or key in grant.repositories)
                and grant.allows("contents", "read"))

    def grant_of(self, token: str) -> Grant | None:
        return self.tokens.get(token)

    def tokens_for(self, owner: str, name: str) -> list[str]:
        """The live tokens issued so far that reach `owner/name`."""
        key = f"{owner}/{name}".lower()
        repo = self.repos.get(key)
        return [token for token, grant in self.tokens.items()
                if repo is not None and grant.installation_id in repo.installation_ids
                and (grant.repositories is None or key in grant.repositories)]

    # ---- endpoints --------------------------------------------------------------------------

    async def _access_token(self, request: Request) -> JSONResponse:
        problem = self._app_jwt_problem(request)
        if problem:
            return _error(401, problem)
        installation_id = request.path_params["installation_id"]
        installed = [r for r in self.repos.values() if installation_id in r.installation_ids]
        if not installed:
            return _error(404, "Not Found")
        asked = await request.json() if await request.body() else {}
        names = asked.get("repositories")
        installed_permissions = self.installation_permissions.get(
            installation_id, DEFAULT_INSTALLATION_PERMISSIONS)
        permissions = dict(installed_permissions)
        if asked.get("permissions") is not None:
            wanted = asked["permissions"]
            if any(installed_permissions.get(k) is None or v not in LEVELS
                   or LEVELS[v] > LEVELS[installed_permissions[k]] for k, v in wanted.items()):
                return JSONResponse({"message": "The permissions requested are not granted to "
                                                "this installation.",
                                     "documentation_url": "https://docs.github.com/rest"}, 422)
            permissions = {**wanted, "metadata": "read"}
        scope: list[FakeRepo] | None = None
        if names is not None:
            scope = [r for r in installed if r.name.lower() in {n.lower() for n in names}]
            if {r.name.lower() for r in scope} != {n.lower() for n in names}:
                return JSONResponse({"message": "There is at least one repository that does not "
                                                "exist or is not accessible to the parent "
                                                "installation.",
                                     "documentation_url": "https://docs.github.com/rest"}, 422)
        token = "ghs_" + secrets.token_hex(18)
        expires_at = self.clock() + self.token_lifetime
        self.tokens[token] = Grant(installation_id, expires_at, None if scope is None else
                                   frozenset(f"{r.owner}/{r.name}".lower() for r in scope),
                                   tuple(sorted(permissions.items())))
        self.tokens_issued += 1
        stamp = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        answer: dict[str, Any] = {"token": token, "expires_at": stamp,
                                  "permissions": permissions,
                                  "repository_selection": "selected"}
        if scope is not None:
            answer["repositories"] = [{"name": r.name, "full_name": f"{r.owner}/{r.name}",
                                       "owner": {"login": r.owner}} for r in scope]
        return JSONResponse(answer, 201)

    async def _revoke_token(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        grant = self.tokens.get(token) if scheme.lower() in ("token", "bearer") else None
        if grant is None or grant.expires_at <= self.clock():
            return _error(401, "Bad credentials")
        self.tokens[token] = replace(grant, expires_at=0.0)  # dead, still inspectable
        self.revoked.append(token)
        return Response(status_code=204)

    def _retained(self) -> list[HookDelivery]:
        """The deliveries GitHub still keeps, newest first."""
        horizon = self.clock() - DELIVERY_RETENTION
        return [d for d in reversed(self.deliveries) if d.delivered_at >= horizon]

    async def _list_deliveries(self, request: Request) -> JSONResponse:
        problem = self._app_jwt_problem(request)
        if problem:
            return _error(401, problem)
        try:
            per_page = int(request.query_params.get("per_page", "30"))
        except ValueError:
            per_page = 0
        cursor = request.query_params.get("cursor")
        if not 1 <= per_page <= 100 or (cursor is not None and not (
                cursor.startswith("v1_") and cursor[3:].isdigit())):
            return _error(422, "Validation Failed")
        listed = self._retained()
        if cursor is not None:
            listed = [d for d in listed if d.id <= int(cursor[3:])]
        page, rest = listed[:per_page], listed[per_page:]
        headers = {}
        if rest:
            following = request.url.include_query_params(per_page=per_page,
                                                          cursor=f"v1_{rest[0].id}")
            headers["Link"] = f'<{following}>; rel="next"'
        return JSONResponse([d.as_json() for d in page], headers=headers)

    async def _redeliver(self, request: Request) -> JSONResponse:
        problem = self._app_jwt_problem(request)
        if problem:
            return _error(401, problem)
        delivery_id = request.path_params["delivery_id"]
        original = next((d for d in self.deliveries if d.id == delivery_id), None)
        if original is None:
            return _error(404, "Not Found")
        if original not in self._retained():
            return _error(422, "Validation Failed: delivery is older than 3 days")
        task = asyncio.create_task(self._send(original.headers, original.body, redelivery=True))
        self._redeliveries.add(task)
        return JSONResponse({}, 202)

    async def _repo_installation(self, request: Request) -> JSONResponse:
        problem = self._app_jwt_problem(request)
        if problem:
            return _error(401, problem)
        key = f"{request.path_params['owner']}/{request.path_params['repo']}".lower()
        repo = self.repos.get(key)
        if repo is None:
            return _error(404, "Not Found")
        return JSONResponse({"id": min(repo.installation_ids), "app_id": self.app_id,
                             "account": {"login": repo.owner}})

    async def _contents(self, request: Request) -> JSONResponse:
        repo = self._repo_for(request, ("contents", "read"))
        if isinstance(repo, JSONResponse):
            return repo
        ref = request.query_params.get("ref") or "main"
        sha = repo.branches.get(ref, ref)
        path = request.path_params["path"]
        text = repo.files.get((sha, path))
        if text is None:
            return _error(404, "Not Found")
        raw = text.encode()
        encoded = base64.encodebytes(raw).decode()  # wrapped in lines, as GitHub sends it
        return JSONResponse({"type": "file", "encoding": "base64", "size": len(raw),
                             "name": path.rsplit("/", 1)[-1], "path": path,
                             "content": encoded, "sha": secrets.token_hex(20)})

    async def _permission(self, request: Request) -> JSONResponse:
        repo = self._repo_for(request)
        if isinstance(repo, JSONResponse):
            return repo
        user = request.path_params["user"]
        permission = repo.permissions.get(user, "read")
        return JSONResponse({"permission": permission, "role_name": permission,
                             "user": {"login": user}})

    async def _body(self, request: Request, *, create: bool) -> dict[str, Any] | JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Problems parsing JSON")
        try:
            validate_check_run_body(body, create=create)
        except Invalid as exc:
            return JSONResponse({"message": "Invalid request.", "errors": [str(exc)]}, 422)
        return body

    def _apply(self, run: CheckRun, body: dict[str, Any]) -> None:
        for name in ("name", "details_url", "external_id", "started_at", "completed_at",
                     "status"):
            if name in body:
                setattr(run, name, body[name])
        if "conclusion" in body:
            run.conclusion = body["conclusion"]
            run.status = "completed"
        if "output" in body:
            output = dict(body["output"])
            run.annotations += output.pop("annotations", [])
            run.output = output
        run.history.append(body)

    def _as_json(self, run: CheckRun) -> dict[str, Any]:
        return {"id": run.id, "name": run.name, "head_sha": run.head_sha, "status": run.status,
                "conclusion": run.conclusion, "details_url": run.details_url,
                "external_id": run.external_id,
                "output": {**run.output, "annotations_count": len(run.annotations)}}

    async def _create_check_run(self, request: Request) -> JSONResponse:
        repo = self._repo_for(request, ("checks", "write"))
        if isinstance(repo, JSONResponse):
            return repo
        body = await self._body(request, create=True)
        if isinstance(body, JSONResponse):
            return body
        run = CheckRun(next(self._ids), repo.owner, repo.name, body["name"], body["head_sha"])
        self._apply(run, body)
        self.check_runs[run.id] = run
        return JSONResponse(self._as_json(run), 201)

    async def _update_check_run(self, request: Request) -> JSONResponse:
        repo = self._repo_for(request, ("checks", "write"))
        if isinstance(repo, JSONResponse):
            return repo
        run = self.check_runs.get(request.path_params["check_run_id"])
        if run is None or (run.owner, run.repo) != (repo.owner, repo.name):
            return _error(404, "Not Found")
        body = await self._body(request, create=False)
        if isinstance(body, JSONResponse):
            return body
        self._apply(run, body)
        return JSONResponse(self._as_json(run))

    async def _create_comment(self, request: Request) -> JSONResponse:
        repo = self._repo_for(request, ("issues", "write"))
        if isinstance(repo, JSONResponse):
            return repo
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Problems parsing JSON")
        if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
            return JSONResponse({"message": "Invalid request.", "errors": ["body is required"]}, 422)
        comment = Comment(repo.owner, repo.name, request.path_params["number"], body["body"])
        self.comments.append(comment)
        return JSONResponse({"id": next(self._ids), "body": comment.body}, 201)
