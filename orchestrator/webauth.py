"""Who may read the web pages (`web_access`), enforced by one ASGI middleware in front of them.

- An admin token (the bootstrap `admin_token` or a named one) opens every page: sent as
  `Authorization: Bearer <token>`, or once as `?token=<token>`, which sets a session cookie and
  redirects to the same page without the token in its address. The cookie holds the token's
  name and an HMAC bound to the token's hash, not the token: a stolen cookie opens the pages but
  not the Admin service, and dies when the token is revoked.
- `signed` (the default) also takes a grant (`orchestrator.grants`): the links the integrations
  publish carry `?grant=RUN.EXPIRY.MAC`, which opens that run's pages only: `/runs/RUN...` and
  `/jobs/JOB...` of its jobs (their logs and anything else under them). A grant in the address
  sets a cookie for that run (a few hours), so the links between its pages need none. A run is
  named by its full id only: prefixes, indexes and unknown ids answer like another run's pages,
  so a grant tells nothing about other runs. Expired, forged and other runs' grants: 403, why.
- `token`: the admin token only. `public`: no middleware at all.

`/healthz` and `/readyz` are always open.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.postgres import TRANSIENT_ERRORS
from orchestrator.admintokens import AdminTokens
from orchestrator.db import Database
from orchestrator.grants import GrantRefused, GrantSigner

COOKIE = "solstice_web"
COOKIE_MAX_AGE = 30 * 24 * 3600
GRANT_COOKIE_PREFIX = "solstice_grant_"
# A grant's cookie lives for a visit, not as long as the grant: one cookie per run opened
# would otherwise pile up in the browser and in every request's headers.
GRANT_COOKIE_MAX_AGE = 8 * 3600
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Where the middleware leaves the admin token's name (`request.state.admin`, None for a grant).
ADMIN_STATE = "admin"
RUN_PATH = re.compile(r"/runs/([0-9a-f-]{36})(?:/.*)?")
JOB_PATH = re.compile(r"/jobs/([0-9a-f-]{36})(?:/.*)?")
TOKEN_HELP = ("open it once as {path}?token=TOKEN (a cookie keeps you signed in), or send "
              "Authorization: Bearer TOKEN")
REFUSAL = "this page needs the orchestrator's admin token: " + TOKEN_HELP + "\n"
SIGNED_REFUSAL = ("this page opens from the link in a commit's status or check run on the "
                  "forge, or with an admin token: " + TOKEN_HELP + "\n")


@dataclass(frozen=True)
class WebPolicy:
    """What the middleware checks against: the admin tokens, the signing key, and the grants
    (None in `token` mode)."""

    db: Database
    tokens: AdminTokens
    key: bytes = field(repr=False)
    grants: GrantSigner | None
    secure_cookie: bool = False


def session_value(key: bytes, name: str, token_hash: bytes) -> str:
    """The session cookie of the admin token `name`: changes when the token does."""
    mac = hmac.new(key, b"solstice web session v2:" + name.encode() + b":" + token_hash,
                   hashlib.sha256).hexdigest()
    return f"{name}.{mac}"


@dataclass(frozen=True)
class _Pass:
    """Serve the page, setting these cookies on the answer; `admin` names the admin token the
    visitor holds (None for a grant), which the pages offer actions to."""

    cookies: list[tuple[str, str, int]] = field(default_factory=list)
    admin: str | None = None


class WebAccess:
    """ASGI middleware: serves a page to an admin token or a grant for its run."""

    def __init__(self, app: ASGIApp, *, policy: WebPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            answer = await self._answer(Request(scope))
        except TRANSIENT_ERRORS:
            # Named tokens and the runs live in the database: a retry later may pass.
            answer = PlainTextResponse("the orchestrator's database is unavailable, so access "
                                       "cannot be checked; retry shortly\n", status_code=503)
        if isinstance(answer, Response):
            await answer(scope, receive, send)
        else:
            scope.setdefault("state", {})[ADMIN_STATE] = answer.admin
            await self.app(scope, receive, self._with_cookies(send, answer.cookies))

    async def _answer(self, request: Request) -> Response | _Pass:
        given = request.query_params.get("token")
        if given is not None:
            return await self._login(request, given)
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            if (name := await self.policy.tokens.identify(header[len("Bearer "):])) is not None:
                return _Pass(admin=name)
            return self._unauthorized(request, "wrong token")
        if (name := await self._session(request.cookies.get(COOKIE))) is not None:
            return _Pass(admin=name)
        if self.policy.grants is not None:
            return await self._by_grant(request, self.policy.grants)
        return self._unauthorized(request, "no token")

    async def _login(self, request: Request, given: str) -> Response:
        """`?token=`: a session cookie and a redirect to the page without the token."""
        name = await self.policy.tokens.identify(given)
        if name is None:
            return self._unauthorized(request, "wrong token")
        target = request.url.remove_query_params("token")
        # Relative to the page itself, so it holds behind a proxy that strips a prefix.
        location = (target.path.rsplit("/", 1)[-1] or "./") + \
            (f"?{target.query}" if target.query else "")
        redirect = RedirectResponse(location, status_code=303,
                                    headers={"Referrer-Policy": "no-referrer"})
        redirect.set_cookie(COOKIE, session_value(self.policy.key, name,
                                                  hashlib.sha256(given.encode()).digest()),
                            max_age=COOKIE_MAX_AGE, path="/", httponly=True, samesite="lax",
                            secure=self.policy.secure_cookie)
        return redirect

    async def _session(self, cookie: str | None) -> str | None:
        """The admin token name a valid session cookie stands for."""
        if not cookie or "." not in cookie:
            return None
        name = cookie.rpartition(".")[0]
        token_hash = await self.policy.tokens.active_hash(name)
        valid = token_hash is not None and hmac.compare_digest(
            cookie, session_value(self.policy.key, name, token_hash))
        return name if valid else None

    async def _by_grant(self, request: Request, signer: GrantSigner) -> Response | _Pass:
        """A grant in the address, else in the run's cookie, for the run this page belongs
        to; a page of no run (or of no run we know) is covered by no grant."""
        run_id = await self._run_of(request.url.path)
        given = request.query_params.get("grant")
        cookie = request.cookies.get(f"{GRANT_COOKIE_PREFIX}{run_id.hex}") if run_id else None
        if given is None and cookie is None:
            return self._unauthorized(request, "no grant")
        try:
            grant = signer.check(given if given is not None else cookie or "", run_id)
        except GrantRefused as exc:
            return PlainTextResponse(f"{exc}\n", status_code=403)
        if given is None:
            return _Pass()
        max_age = int(min(grant.seconds_left, GRANT_COOKIE_MAX_AGE))
        return _Pass([(f"{GRANT_COOKIE_PREFIX}{run_id.hex}", given, max_age)])

    async def _run_of(self, path: str) -> uuid.UUID | None:
        """The run whose page `path` is: `/runs/RUN...` or `/jobs/JOB...` of one of its jobs."""
        for pattern, lookup in ((RUN_PATH, None),
                                (JOB_PATH, "SELECT run_id FROM jobs WHERE id = $1")):
            match = pattern.fullmatch(path)
            if match is None:
                continue
            try:
                found = uuid.UUID(match.group(1))
            except ValueError:
                return None
            return found if lookup is None else await self.policy.db.pool.fetchval(lookup, found)
        return None

    def _with_cookies(self, send: Send, cookies: list[tuple[str, str, int]]
                      ) -> Callable[[Message], Awaitable[None]]:
        if not cookies:
            return send

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                carrier = Response()
                for name, value, max_age in cookies:
                    carrier.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                                       samesite="lax", secure=self.policy.secure_cookie)
                headers = MutableHeaders(scope=message)
                for key, value in carrier.raw_headers:
                    if key == b"set-cookie":
                        headers.append("set-cookie", value.decode("latin-1"))
                # The grant is in this page's address: keep it out of any Referer.
                headers["referrer-policy"] = "no-referrer"
            await send(message)

        return send_with_cookies

    def _unauthorized(self, request: Request, why: str) -> Response:
        text = REFUSAL if self.policy.grants is None else SIGNED_REFUSAL
        return PlainTextResponse(f"{why}: " + text.format(path=request.url.path),
                                 status_code=401, headers={"WWW-Authenticate": "Bearer"})

