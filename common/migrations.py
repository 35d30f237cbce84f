"""Numbered SQL migrations (`NNNN_name.sql`), applied once each, in order, at start.

Each component keeps its files in its own directory and its bookkeeping in its own table
(the orchestrator `schema_migrations`, the forge integrations `forge_schema_migrations`), so
components sharing a database never number each other's files. Several instances may start
at the same moment: an advisory lock per bookkeeping table serialises them.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def available(directory: Path) -> list[Migration]:
    """The migration files of `directory`, ordered by version; a misnamed file or a version
    used twice is an error, not skipped."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"migrations {found[version].path.name} and {path.name} share "
                             f"version {version}; renumber the newer one")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, directory: Path, *, table: str) -> list[str]:
    """Apply every migration of `directory` not yet recorded in `table`; return those applied
    now, as `NNNN_name`."""
    if not _TABLE.match(table):
        raise ValueError(f"invalid migrations table name {table!r}")
    applied_now: list[str] = []
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
