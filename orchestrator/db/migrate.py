"""The orchestrator's schema: `migrations/NNNN_name.sql`, recorded in `schema_migrations`
(the runner is `common.migrations`)."""
from __future__ import annotations

from pathlib import Path

import asyncpg

from common import migrations

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATIONS_TABLE = "schema_migrations"


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every orchestrator migration not yet applied; return the names applied now."""
    return await migrations.migrate(conn, directory, table=MIGRATIONS_TABLE)
