"""Throw-away schemas (`cidev run`, benches): private while in use, gone afterwards, and an
abandoned one (its process killed) is swept by the next user."""
from __future__ import annotations

from pathlib import Path

import asyncpg

from orchestrator.config import OrchestratorConfig
from orchestrator.standalone import _lock_key, database


async def schemas(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT schema_name FROM information_schema.schemata"
                            " WHERE starts_with(schema_name, 'run_')")
    return {r["schema_name"] for r in rows}


async def test_private_schemas_and_the_sweep(pg_dsn: str, tmp_path: Path) -> None:
    config = OrchestratorConfig(database_url=pg_dsn, state_dir=tmp_path)
    admin = await asyncpg.connect(pg_dsn)
    other = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute('CREATE SCHEMA "run_abandoned"; CREATE SCHEMA "run_busy"')
        await other.execute("SELECT pg_advisory_lock(hashtext($1))", _lock_key("run_busy"))
        async with database(config, schema="run_mine") as db:
            assert await schemas(admin) == {"run_busy", "run_mine"}
            assert await db.pool.fetchval("SELECT current_schema()") == "run_mine"
            tables = await admin.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'run_mine'")
            assert tables >= 6
            assert await admin.fetchval("SELECT to_regclass('public.jobs')") is None
        assert await schemas(admin) == {"run_busy"}
    finally:
        await other.close()
        await admin.close()
