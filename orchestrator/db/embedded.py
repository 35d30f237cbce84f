"""The standalone mode's database: a private PostgreSQL server started with `pgserver`.

The data directory lives under the user's state directory (`platformdirs`), so runs survive a
restart. The first start runs `initdb` (a second or two); later starts take ~0.2 s. The server
stops when the last process using it exits: pgserver lists the processes using it in
`.handle_pids.json`, and a process killed without a chance to remove itself (SIGKILL) would
keep it running for ever, so each start forgets the ones that died.
"""
from __future__ import annotations

import asyncio
import logging
import re
import warnings
from pathlib import Path

import asyncpg
import platformdirs
import psutil

from common.errors import SolsticeError

log = logging.getLogger(__name__)

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
HANDLES_FILE = ".handle_pids.json"


def _registered(pid: int, listed_at: float) -> bool:
    """Whether process `pid` can be the one that put itself on a list last written at
    `listed_at`: it runs, and it is not a newer process that was given a dead one's pid."""
    try:
        return psutil.Process(pid).create_time() <= listed_at
    except psutil.Error:
        return False


def _start_server(data_dir: Path) -> object:
    """pgserver's handle on the server in `data_dir`, started if needed, after forgetting the
    dead processes on its list of users (with one of them left it would never stop)."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (root, containers);
        # pgserver then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: it is heavy and only the standalone mode needs it
        from pgserver.postgres_server import PostgresServer
        from pgserver.utils import DiskList

    handles = DiskList(data_dir / HANDLES_FILE)
    with PostgresServer._lock:  # the lock pgserver holds while it changes the list
        if handles.path.exists():
            listed_at = handles.path.stat().st_mtime
            pids = handles.get()
            alive = [pid for pid in pids if _registered(pid, listed_at)]
            if alive != pids:
                log.info("forgot dead users of the embedded postgres",
                         extra={"pids": sorted(set(pids) - set(alive))})
                handles.put(alive)
    return pgserver.get_server(data_dir, cleanup_mode="stop")


def default_state_dir() -> Path:
    """Where Solstice keeps local state (embedded database, local backend workspaces)."""
    return Path(platformdirs.user_state_dir("solstice"))


class EmbeddedPostgres:
    """One pgserver-managed server in `data_dir`; `start` returns a DSN for `database`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = None

    async def start(self) -> None:
        """Start the server, or join the one running on `data_dir`."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = await asyncio.to_thread(_start_server, self.data_dir)
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
