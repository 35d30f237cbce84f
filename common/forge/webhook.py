"""The web edge both integrations share: a Starlette app served by uvicorn.

- `read_body` reads the raw body (the signature covers those exact bytes) within `BodyLimits`:
  more than `max_bytes` is refused with 413 as soon as it is declared or streamed, a body not
  complete within `timeout` seconds with 408, a client gone mid-body with 400 (no traceback);
- `parse_json` turns a body that is not JSON, nests too deeply, holds an integer longer than
  Python accepts, or a string no service can store (a lone surrogate, a NUL) into a 400 with
  the reason. Call it only on a body whose signature was verified: parsing costs time;
- `webhook_app` builds the app: the routes given, `GET /healthz` and `GET /readyz`
  (`common.health`), `GET /metrics` (`common.metrics`), and the translation of
  `WebhookRejected` (and any `SolsticeError`) raised by a handler into a JSON answer
  `{"error": ..., "hint": ...}` with the right status, so handlers just raise; a database
  error that escapes a handler is a 503 the same way. A webhook (`POST /webhooks/...`) takes
  a short way to its handler (`WebhookEdge`): a burst of them is bound by the edge's CPU;
- `answer` is the JSON body of a handled webhook: `{"outcome": ..., "reason": ...}`;
- `serve` and `running` (from `common.http`) serve the app in the foreground or background.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import SolsticeError
from common.forge.answering import Answering, AnsweringMiddleware
from common.forge.errors import WebhookRejected
from common.health import Check, Detail, health_routes
from common.metrics import WEBHOOK_PREFIX, Refresher, WebhookOutcomes, metrics_route
from common.postgres import DATABASE_ERRORS

log = logging.getLogger(__name__)

# Forgejo caps webhook bodies far below this; GitHub at 25 MB (and then omits the payload).
MAX_BODY = 25 * 1024 * 1024
# Forgejo gives up on a delivery after 5 s by default, GitHub after 10 s: a body still arriving
# after that is nobody's webhook, only a held connection.
BODY_TIMEOUT = 10.0
# Only a \u escape can put a surrogate or a NUL into a parsed string (raw bytes cannot: UTF-8
# has no surrogates and JSON forbids raw control characters), so bodies without one skip the walk.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:[dD][89abcdefABCDEF]|0000)")
# Answers to a body not read to its end: the connection cannot carry another request.
_CLOSE = {408, 413}


@dataclass(frozen=True)
class BodyLimits:
    """How much of a request body the edge reads, and for how long."""

    max_bytes: int = MAX_BODY
    timeout: float = BODY_TIMEOUT


async def read_body(request: Request, limits: BodyLimits = BodyLimits()) -> bytes:
    """The raw request body within `limits` (413 too large, 408 too slow, 400 client gone)."""
    limit = limits.max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WebhookRejected(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise WebhookRejected(413, f"body exceeds the {limit}-byte limit")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise WebhookRejected(408, f"body not received within {limits.timeout:g} s "
                                   f"({size} bytes arrived)") from exc
    except ClientDisconnect as exc:
        raise WebhookRejected(400, f"client disconnected after {size} bytes of the body") from exc
    return b"".join(chunks)


def _refuse_unstorable(payload: Any) -> None:
    """400 if a string (or key) of `payload` holds a lone surrogate or a NUL: neither can be
    encoded as UTF-8 for the broker nor stored in PostgreSQL text. Iterative: depth is no risk."""
    pending = [payload]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise WebhookRejected(400, "body holds a string with a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise WebhookRejected(400, "body holds a string with a lone UTF-16 surrogate "
                                           f"({value[exc.start]!r})") from exc


def parse_json(body: bytes) -> Any:
    """The JSON document in `body`, or a 400 saying why it is refused (see the module doc)."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as exc:
        raise WebhookRejected(400, f"body is not UTF-8 JSON: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise WebhookRejected(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}") from exc
    except RecursionError as exc:
        raise WebhookRejected(400, "body nests arrays or objects too deeply") from exc
    except ValueError as exc:  # an integer beyond sys.get_int_max_str_digits()
        raise WebhookRejected(400, f"body is not acceptable JSON: {exc}") from exc
    if _UNSTORABLE_ESCAPE.search(body):
        _refuse_unstorable(payload)
    return payload


def answer(outcome: str, reason: str = "", status: int = 200, **fields: Any) -> JSONResponse:
    """The reply to a webhook that was handled: `outcome` is published, ignored, duplicate..."""
    return JSONResponse({"outcome": outcome, "reason": reason, **fields}, status_code=status)


async def _rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebhookRejected)
    log.info("webhook refused", extra={"path": request.url.path, "status": exc.status,
                                       "reason": exc.message})
    headers = {"Connection": "close"} if exc.status in _CLOSE else None
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.status,
                        headers=headers)


async def _solstice_error(request: Request, exc: Exception) -> Response:
    # An error a handler did not map: the integration's own dependencies failed, which a
    # retry of the webhook may get past, so the forge is told to retry.
    assert isinstance(exc, SolsticeError)
    log.error("webhook failed", extra={"path": request.url.path, "error": exc.message})
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=503)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    # The delivery was not recorded as handled, so its redelivery is processed afresh.
    log.error("webhook failed: database unavailable", extra={
        "path": request.url.path, "error": f"{type(exc).__name__}: {exc}"})
    return JSONResponse({"error": f"database unavailable: {type(exc).__name__}: {exc}",
                         "hint": "retry the delivery once the database is back"},
                        status_code=503)


Handler = Callable[[Request, Exception], Awaitable[Response]]


class WebhookEdge:
    """ASGI app: a `POST` to a webhook route goes straight to its endpoint, anything else to
    `app` (the Starlette app holding every route).

    In a burst the edge is bound by its CPU (`bench/ingest.py`), and Starlette's router,
    exception middlewares and request wrapper cost a sixth of it per webhook. This path keeps
    what they do for a webhook: an exception with a handler in `handlers` (looked up along its
    class's MRO, as Starlette does) becomes that handler's answer; any other propagates to
    uvicorn, which logs it and answers 500."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, Callable[[Request], Awaitable[Response]]],
                 handlers: Mapping[type[Exception], Handler]) -> None:
        self.app = app
        self._endpoints = endpoints
        self._handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (self._endpoints.get(scope["path"])
                    if scope["type"] == "http" and scope["method"] == "POST" else None)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # what Starlette gives its requests
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = next((self._handlers[cls] for cls in type(exc).__mro__
                            if cls in self._handlers), None)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def webhook_app(routes: Sequence[BaseRoute], *,
                lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
                checks: Mapping[str, Check] | None = None,
                details: Mapping[str, Detail] | None = None,
                metrics: Sequence[Refresher] = (),
                answering: Answering | None = None) -> ASGIApp:
    """An app with `routes`, `/healthz`, `/readyz` (running `checks`, showing `details`),
    `/metrics` (after `metrics` refreshed their gauges; every webhook answer counted,
    `common.metrics`) and the error answers described above. Webhooks in flight count in
    `answering` (the inbox worker steps aside for them)."""
    handlers: dict[type[Exception], Handler] = {
        WebhookRejected: _rejected, SolsticeError: _solstice_error}
    handlers.update({error: _database_unavailable for error in DATABASE_ERRORS})
    app = Starlette(
        routes=[*routes, *health_routes(checks or {}, details), metrics_route(metrics)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    webhooks = {route.path: route.endpoint for route in routes
                if isinstance(route, Route) and route.path.startswith(WEBHOOK_PREFIX)
                and "POST" in (route.methods or ())}
    return WebhookOutcomes(AnsweringMiddleware(WebhookEdge(app, webhooks, handlers),
                                               answering or Answering()))
