"""Serving an ASGI app with uvicorn: as a service until it is signalled to stop or one of its
supervised tasks fails, or in the background of a running event loop (the orchestrator's
web pages, tests, benchmarks)."""
from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from common.supervise import Supervisor


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    # log_config=None keeps the logfmt handlers of setup_observability; httptools is named so
    # that a missing parser is an error, not a silent fall back to the slower h11.
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                          lifespan="on", timeout_graceful_shutdown=10, http="httptools")


class _QuietServer(uvicorn.Server):
    # Signals belong to the process hosting the server (the orchestrator drains on SIGTERM).
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BackgroundServer:
    """`app` served in a task of the current loop: `await start()` returns the base URL."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._server = _QuietServer(_config(app, host, port))
        self._task: asyncio.Task[None] | None = None
        self._supervised = False
        self.url = ""

    async def start(self, supervisor: Supervisor | None = None) -> str:
        """Listen; with `supervisor`, uvicorn ending before `stop()` fails the service."""
        self._task = (asyncio.create_task(self._server.serve(), name="http-server")
                      if supervisor is None
                      else supervisor.spawn("http-server", self._server.serve()))
        self._supervised = supervisor is not None
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("uvicorn exited before it started listening")
            await asyncio.sleep(0.01)
        bound = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{bound}"
        return self.url

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is None:
            return
        await asyncio.wait({self._task})
        if self._server.started and (self._task.cancelled() or self._task.exception()):
            # uvicorn died while serving: close what it left open, the app's lifespan above
            # all (the integrations stop their consumers and workers there).
            await self._server.shutdown()
        if not self._supervised:  # else the supervisor reported how it ended
            self._task.result()


@contextlib.asynccontextmanager
async def running(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` in the background; yields `http://host:port` once it listens."""
    server = BackgroundServer(app, host, port)
    try:
        yield await server.start()
    finally:
        await server.stop()


async def serve(app: ASGIApp, host: str, port: int,
                ready: Callable[[str], None] | None = None, *,
                supervisor: Supervisor | None = None) -> None:
    """Serve `app` until SIGTERM or SIGINT, finish the requests in flight, then return.

    Returning (where uvicorn's own handling re-raises the signal) lets the caller close its
    broker connection and database pool and exit 0. `ready` gets the base URL once listening.
    The server runs under `supervisor`, with the tasks the app's lifespan spawned there: when
    one of them fails, the server stops the same way and `TaskFailed` is raised (exit non-zero).
    """
    supervisor = supervisor or Supervisor()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, supervisor.stop)
    server = BackgroundServer(app, host, port)
    try:
        url = await server.start(supervisor)
        if ready is not None:
            ready(url)
        await supervisor.wait()
    finally:
        supervisor.stop()
        await server.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)
