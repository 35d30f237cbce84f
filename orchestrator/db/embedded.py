"""The standalone mode's database: a private PostgreSQL server started with `pgserver`.

The data directory lives under the user's state directory (`platformdirs`), so runs survive a
restart. The first start runs `initdb` (a second or two); later starts take ~0.2 s. The server
stops when the last process using it exits.
"""
from __future__ import annotations

import asyncio
import logging
import re
import warnings
from pathlib import Path

import asyncpg
import platformdirs

from common.errors import SolsticeError

log = logging.getLogger(__name__)

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def default_state_dir() -> Path:
    """Where Solstice keeps local state (embedded database, local backend workspaces)."""
    return Path(platformdirs.user_state_dir("solstice"))


class EmbeddedPostgres:
    """One pgserver-managed server in `data_dir`; `start` returns a DSN for `database`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = None

    async def start(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (root, containers);
            # pgserver then uses /tmp, which is fine.
            warnings.simplefilter("ignore")
            import pgserver  # imported here: it is heavy and only the standalone mode needs it

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = await asyncio.to_thread(pgserver.get_server, self.data_dir,
                                                   cleanup_mode="stop")
        except Exception as exc:  # pgserver raises plain errors from initdb/pg_ctl
            raise SolsticeError(
                f"cannot start the embedded PostgreSQL in {self.data_dir}: {exc}",
                hint=f"see {self.data_dir / 'log'}, or give --database-url to use a server",
            ) from exc
        log.info("embedded postgres ready", extra={"data_dir": str(self.data_dir)})

    def dsn(self, database: str = "postgres") -> str:
        if self._server is None:
            raise RuntimeError("EmbeddedPostgres.start() was not awaited")
        return self._server.get_uri(database=database)

    async def create_database(self, name: str) -> str:
        """Create `name` if it does not exist; return its DSN."""
        if not _DB_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        conn = await asyncpg.connect(self.dsn())
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)

    async def drop_database(self, name: str) -> None:
        if not _DB_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def stop(self) -> None:
        """Release this process's handle; the server stops if no other process uses it."""
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.cleanup)
