"""The web pages' gate while they have no per-run signed links: the admin token, presented as
`Authorization: Bearer <token>` or once as `?token=<token>`, which sets a cookie and redirects
to the same page without the token in its address. `/healthz`, `/readyz` and `/metrics` are
always open.

The cookie holds a value derived from the token (an HMAC), not the token itself: a stolen
browser cookie opens the log pages but not the Admin service.
"""
from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.adminauth import token_matches

COOKIE = "solstice_web"
COOKIE_MAX_AGE = 30 * 24 * 3600
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REFUSAL = ("this page needs the orchestrator's admin token: open it once as {path}?token=TOKEN "
           "(a cookie keeps you signed in), or send Authorization: Bearer TOKEN\n")


def session_value(token: str) -> str:
    """The cookie's value for `token`: changes when the token is rotated."""
    return hmac.new(token.encode(), b"solstice web session v1", hashlib.sha256).hexdigest()


class WebTokenRequired:
    """ASGI middleware: lets a request through only with the token (header or cookie)."""

    def __init__(self, app: ASGIApp, *, token: str, secure_cookie: bool) -> None:
        self.app = app
        self._token = token
        self._session = session_value(token)
        self._secure = secure_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = self._answer(request)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _answer(self, request: Request) -> Response | None:
        """None to serve the page; else the refusal or the cookie-setting redirect."""
        given = request.query_params.get("token")
        if given is not None:
            if not token_matches(given, self._token):
                return self._refuse(request, "wrong token")
            target = request.url.remove_query_params("token")
            # Relative to the page itself, so it holds behind a proxy that strips a prefix.
            location = (target.path.rsplit("/", 1)[-1] or "./") + \
                (f"?{target.query}" if target.query else "")
            redirect = RedirectResponse(location, status_code=303,
                                        headers={"Referrer-Policy": "no-referrer"})
            redirect.set_cookie(COOKIE, self._session, max_age=COOKIE_MAX_AGE, path="/",
                                httponly=True, samesite="lax", secure=self._secure)
            return redirect
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and token_matches(header[len("Bearer "):], self._token):
            return None
        if token_matches(request.cookies.get(COOKIE), self._session):
            return None
        return self._refuse(request, "no token")

    @staticmethod
    def _refuse(request: Request, why: str) -> Response:
        return PlainTextResponse(f"{why}: " + REFUSAL.format(path=request.url.path),
                                 status_code=401, headers={"WWW-Authenticate": "Bearer"})
