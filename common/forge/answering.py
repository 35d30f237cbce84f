"""Answering webhooks comes before processing them.

A forge waits only seconds for an answer (GitHub 10 s, and it does not retry by itself), while
a stored delivery can wait for its run: so in a burst the inbox worker, which shares the
integration's event loop (and CPU) with the web edge, steps aside. `Answering` counts the
webhook requests in flight (`AnsweringMiddleware` around the app); the worker calls
`quiet(at_most)` before each round, which returns once no webhook has been answered for a
moment (`SETTLE`), or after `at_most` seconds so that a sustained flood still sees its runs
published.
"""
from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from common.metrics import WEBHOOK_PREFIX
from common.supervise import wait_event

# A burst answers its webhooks in waves (a stored batch answers together), with gaps of a
# few milliseconds between them: quiet means none in flight for this long.
SETTLE = 0.05


class Answering:
    """How many webhook requests are being answered right now."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._last_answer = 0.0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def started(self) -> None:
        self.in_flight += 1
        self._quiet.clear()

    def ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._last_answer = asyncio.get_running_loop().time()
            self._quiet.set()

    async def quiet(self, at_most: float) -> None:
        """Return once no webhook was in flight for `SETTLE` seconds, or after `at_most`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + at_most
        while (now := loop.time()) < deadline:
            if self.in_flight:
                await wait_event(self._quiet, deadline - now)
                continue
            idle = now - self._last_answer
            if idle >= SETTLE:
                return
            await asyncio.sleep(min(SETTLE - idle, deadline - now))


class AnsweringMiddleware:
    """ASGI middleware: every `/webhooks/...` request counts in `answering` while it runs."""

    def __init__(self, app: ASGIApp, answering: Answering) -> None:
        self.app = app
        self.answering = answering

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(WEBHOOK_PREFIX):
            await self.app(scope, receive, send)
            return
        self.answering.started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.answering.ended()
