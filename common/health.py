"""`/healthz` and `/readyz`, the same on every service.

- `GET /healthz` (liveness): 200 while the process answers HTTP at all;
- `GET /readyz` (readiness): 200 `{"status": "ready", "checks": {name: "ok"}}` when every
  check passes (database and broker reachable, supervised tasks alive), else 503 with what
  each failing check raised, `{"status": "not ready", "checks": {"database": "..."}}`.
  A service may add `details` (figures for operators, such as a backlog) that never decide
  readiness: `{"details": {name: value}}`, a detail that could not be read saying why.

Both are unauthenticated: load balancers and monitoring call them, and they reveal no more
than whether a dependency is reachable.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.broker import Broker
from common.supervise import NotReady

# A check passes by returning; whatever it raises is the reason it failed.
Check = Callable[[], Awaitable[None]]
# A detail returns a JSON-able value shown beside the checks.
Detail = Callable[[], Awaitable[Any]]
# A check that takes longer than this fails (a database that accepts TCP but never answers).
CHECK_TIMEOUT = 2.0


def database_check(pool: asyncpg.Pool) -> Check:
    """Passes when `pool` answers a trivial query."""
    async def check() -> None:
        await pool.fetchval("SELECT 1")
    return check


def broker_check(broker: Broker) -> Check:
    """Passes while `broker` is connected (not while it is reconnecting)."""
    async def check() -> None:
        if not broker.connected:
            raise NotReady("not connected to the message broker")
    return check


async def _run(check: Check) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check()
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        return exc.message if isinstance(exc, NotReady) else f"{type(exc).__name__}: {exc}"
    return "ok"


async def _detail(detail: Detail) -> Any:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await detail()
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def health_routes(checks: Mapping[str, Check],
                  details: Mapping[str, Detail] | None = None) -> list[Route]:
    """The two routes described in the module docstring, with `checks` (and `details`)
    behind `/readyz`."""
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        names = list(checks)
        results = dict(zip(names, await asyncio.gather(*(_run(checks[n]) for n in names)),
                           strict=True))
        ready = all(result == "ok" for result in results.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": results}
        if details:
            values = await asyncio.gather(*(_detail(d) for d in details.values()))
            body["details"] = dict(zip(details, values, strict=True))
        return JSONResponse(body, status_code=200 if ready else 503)

    return [Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"])]
