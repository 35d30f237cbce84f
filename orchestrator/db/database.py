"""A thin wrapper over an asyncpg pool: JSON codecs, transactions and LISTEN."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg

from common.postgres import create_pool
from orchestrator.db.listen import Listener

log = logging.getLogger(__name__)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Database:
    """The orchestrator's connection pool. Create with `Database.connect(dsn)`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str,
                 server_settings: dict[str, str] | None = None) -> None:
        self.pool = pool
        self.dsn = dsn
        self.server_settings = server_settings
        self._listeners: list[Listener] = []

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 2, max_size: int = 10,
                      attempts: int = 10, schema: str | None = None) -> Database:
        """Open a pool, retrying while the server starts (`attempts` tries with backoff).

        `schema` puts every table in that schema (it must exist) instead of `public`.
        """
        settings = {"search_path": f'"{schema}"'} if schema else None
        pool = await create_pool(dsn, min_size=min_size, max_size=max_size, attempts=attempts,
                                 init=_init_connection, server_settings=settings)
        return cls(pool, dsn, settings)

    async def close(self) -> None:
        for listener in self._listeners:
            await listener.close()
        self._listeners.clear()
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction, committed when the block ends without error."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def listen(self, channel: str, callback: Callable[[str], None]) -> Listener:
        """Call `callback(payload)` for every NOTIFY on `channel`, on a dedicated connection,
        listening once this returns; run the listener's `run()` (supervised) to keep it open
        across database restarts (see `orchestrator.db.listen`)."""
        listener = Listener(self.dsn, channel, callback, server_settings=self.server_settings)
        await listener.connect()
        self._listeners.append(listener)
        return listener
