"""Numbered SQL migrations for the forge integrations' own tables, applied at start.

Same scheme as the orchestrator's (`NNNN_name.sql`, each applied once, in order, under an
advisory lock so instances starting together do not race), but the bookkeeping table is a
parameter: the integrations may share a database with the orchestrator, whose
`schema_migrations` numbers its own files. `open_pool` connects (retrying while the server
starts) and applies `common/forge/migrations/`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from common.errors import SolsticeError
from common.retry import Backoff, retry_async

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FORGE_MIGRATIONS_TABLE = "forge_schema_migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DatabaseError(SolsticeError):
    """PostgreSQL cannot be reached or refused the schema."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def available(directory: Path) -> list[Migration]:
    """The migration files in `directory`, by version; a misnamed file is an error, not skipped."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    return found


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR, *,
                  table: str = FORGE_MIGRATIONS_TABLE) -> list[str]:
    """Apply every migration of `directory` not yet recorded in `table`; return those applied now."""
    if not _TABLE.match(table):
        raise ValueError(f"invalid migrations table name {table!r}")
    applied_now: list[str] = []
    # The lock is per bookkeeping table, so unrelated components never wait for each other.
    await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", table)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {table}")}
        for migration in available(directory):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.path.read_text())
                await conn.execute(f"INSERT INTO {table} (version, name) VALUES ($1, $2)",
                                   migration.version, migration.name)
            log.info("applied migration", extra={"table": table, "version": migration.version,
                                                 "migration": migration.name})
            applied_now.append(f"{migration.version:04d}_{migration.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", table)
    return applied_now


async def open_pool(dsn: str, *, min_size: int = 2, max_size: int = 20,
                    attempts: int = 10) -> asyncpg.Pool:
    """A pool on `dsn` with the forge tables migrated; retries while the server starts."""
    async def create() -> asyncpg.Pool:
        return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)

    try:
        pool = await retry_async(create, retry_on=(OSError, asyncpg.CannotConnectNowError),
                                 attempts=attempts, backoff=Backoff(initial=0.2, maximum=3),
                                 describe="connecting to PostgreSQL")
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}",
                            hint="check the database URL and that the server is running") from exc
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    except BaseException:
        await pool.close()
        raise
    return pool
