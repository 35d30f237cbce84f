"""Migration 0008 on a database that already holds a run waiting for approval (real
PostgreSQL): the run takes the new `awaiting_approval` state, nothing else changes."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg

from orchestrator.db.migrate import MIGRATIONS_DIR, migrate


async def test_waiting_runs_become_awaiting_approval(pg_dsn: str, tmp_path: Path) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0008":
            shutil.copy(path, before / path.name)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate(conn, before)
        runs = {}
        for name, job_state in (("waiting", "awaiting_approval"), ("plain", "queued")):
            runs[name] = uuid.uuid4()
            await conn.execute(
                "INSERT INTO runs (id, request_id, repo, commit_sha, ref, event, workflow_path,"
                " trusted, request) VALUES ($1, $2, '{}', 'c', 'r', 'push', 'w', false, '{}')",
                runs[name], name)
            await conn.execute(
                "INSERT INTO jobs (id, run_id, key, name, runs_on, spec, timeout_seconds, state)"
                " VALUES ($1, $2, 'j', 'j', 'l', '{}', 60, $3)", uuid.uuid4(), runs[name],
                job_state)
        assert "0008_admin_tokens_audit" in await migrate(conn)
        states = {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state FROM runs")}
        assert states == {runs["waiting"]: "awaiting_approval", runs["plain"]: "queued"}
        assert await conn.fetchval("SELECT count(*) FROM admin_tokens") == 0
    finally:
        await conn.close()
