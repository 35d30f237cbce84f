"""The web edge both integrations share: a Starlette app served by uvicorn.

- `read_body` reads the raw body (the signature covers those exact bytes), refusing more than
  `MAX_BODY` bytes with 413;
- `parse_json` turns a malformed body into a 400 with the parser's reason;
- `webhook_app` builds the app: the routes given, `GET /healthz` and `GET /readyz`
  (`common.health`), and the translation of `WebhookRejected` (and any `SolsticeError`)
  raised by a handler into a JSON answer `{"error": ..., "hint": ...}` with the right status,
  so handlers just raise; a database error that escapes a handler is a 503 the same way;
- `answer` is the JSON body of a handled webhook: `{"outcome": ..., "reason": ...}`;
- `serve` and `running` (from `common.http`) serve the app in the foreground or background.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from common.errors import SolsticeError
from common.forge.errors import WebhookRejected
from common.health import Check, health_routes
from common.postgres import DATABASE_ERRORS

log = logging.getLogger(__name__)

# Forgejo caps webhook bodies far below this; GitHub at 25 MB (and then omits the payload).
MAX_BODY = 25 * 1024 * 1024


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The raw request body, at most `limit` bytes (else 413 before reading the rest)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WebhookRejected(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The JSON document in `body`, or a 400 saying where it is malformed."""
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise WebhookRejected(400, f"body is not UTF-8 JSON: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise WebhookRejected(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}") from exc


def answer(outcome: str, reason: str = "", status: int = 200, **fields: Any) -> JSONResponse:
    """The reply to a webhook that was handled: `outcome` is published, ignored, duplicate..."""
    return JSONResponse({"outcome": outcome, "reason": reason, **fields}, status_code=status)


async def _rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebhookRejected)
    log.info("webhook refused", extra={"path": request.url.path, "status": exc.status,
                                       "reason": exc.message})
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.status)


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


def webhook_app(routes: Sequence[BaseRoute], *,
                lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
                checks: Mapping[str, Check] | None = None) -> Starlette:
    """A Starlette app with `routes`, `/healthz`, `/readyz` (running `checks`) and the error
    answers described above."""
    handlers: dict[type[Exception], Callable[[Request, Exception], Any]] = {
        WebhookRejected: _rejected, SolsticeError: _solstice_error}
    handlers.update({error: _database_unavailable for error in DATABASE_ERRORS})
    return Starlette(
        routes=[*routes, *health_routes(checks or {})],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
