"""The forge integrations' own tables: `migrations/NNNN_name.sql`, recorded in
`forge_schema_migrations` (the runner is `common.migrations`). `open_pool` connects, retrying
while the server starts, and applies them.
"""
from __future__ import annotations

from pathlib import Path

import asyncpg

from common import migrations
from common.postgres import create_pool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FORGE_MIGRATIONS_TABLE = "forge_schema_migrations"


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR, *,
                  table: str = FORGE_MIGRATIONS_TABLE) -> list[str]:
    """Apply every migration of `directory` not yet recorded in `table`; return those applied now."""
    return await migrations.migrate(conn, directory, table=table)


async def open_pool(dsn: str, *, min_size: int = 2, max_size: int = 20,
                    attempts: int = 10) -> asyncpg.Pool:
    """A pool on `dsn` with the forge tables migrated; retries while the server starts."""
    # The integrations' queries leave no session state (the migration lock is released, the
    # inbox listener removed), and a webhook is a few queries: skip the reset round trips.
    pool = await create_pool(dsn, min_size=min_size, max_size=max_size, attempts=attempts,
                             reset_sessions=False)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    except BaseException:
        await pool.close()
        raise
    return pool
