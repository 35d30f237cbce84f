"""LISTEN on a dedicated connection that survives a database restart.

A pooled connection cannot hold a LISTEN (it goes back to the pool), so each channel gets a
connection of its own. The server drops it on a restart, a failover or `pg_terminate_backend`;
`Listener.run` (a supervised task) then reopens it, retrying until the server is back, and
calls the callback once with an empty payload: NOTIFYs sent while it was gone are lost, so
the listener's owner must look for itself (the outbox relay sweeps).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from common.postgres import TRANSIENT_ERRORS
from common.retry import Backoff, retry_async
from common.supervise import NotReady

log = logging.getLogger(__name__)


class Listener:
    """`callback(payload)` for every NOTIFY on `channel`; `connect()`, then `run()`."""

    def __init__(self, dsn: str, channel: str, callback: Callable[[str], None], *,
                 server_settings: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.channel = channel
        self.callback = callback
        self.server_settings = server_settings
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ready(self) -> None:
        """Readiness check: raises `NotReady` while the connection is being reopened."""
        if not self.connected:
            raise NotReady(f"the LISTEN connection ({self.channel}) is being reopened")

    async def connect(self) -> None:
        """Open the connection and LISTEN (raises what asyncpg raises if it cannot)."""
        conn = await asyncpg.connect(self.dsn, server_settings=self.server_settings)
        try:
            self._lost.clear()
            conn.add_termination_listener(lambda _conn: self._lost.set())
            await conn.add_listener(self.channel,
                                    lambda _conn, _pid, _channel, payload: self.callback(payload))
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def run(self) -> None:
        """Keep listening until cancelled; reopen the connection whenever the server drops it."""
        try:
            while True:
                await self._lost.wait()
                log.warning("LISTEN connection lost; reopening", extra={"channel": self.channel})
                await retry_async(self.connect, retry_on=TRANSIENT_ERRORS,
                                  backoff=Backoff(initial=0.2, maximum=5.0),
                                  describe=f"reopening LISTEN {self.channel}")
                log.info("LISTEN connection reopened", extra={"channel": self.channel})
                self.callback("")
        finally:
            await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close()
