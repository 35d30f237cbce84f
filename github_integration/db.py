"""The GitHub integration's database: the shared forge tables plus `github_check_runs`."""
from __future__ import annotations

from pathlib import Path

import asyncpg

from common.forge.migrate import migrate, open_pool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Its own bookkeeping table: the forge tables and the orchestrator's number their own files.
MIGRATIONS_TABLE = "github_schema_migrations"


async def open_database(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """A pool on `dsn` with the forge tables and the GitHub tables migrated."""
    pool = await open_pool(dsn, min_size=min_size, max_size=max_size)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, MIGRATIONS_DIR, table=MIGRATIONS_TABLE)
    except BaseException:
        await pool.close()
        raise
    return pool
