"""The record of a local run, kept after its throw-away database is gone: `manifest.json` and
every artifact under `jobs/<job-key>/attempt-<n>/`, the layout of `ciadm bundle`."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from orchestrator.bundle import member_name
from orchestrator.service import Orchestrator


async def save_record(orchestrator: Orchestrator, run_id: uuid.UUID, directory: Path) -> int:
    """Write the ended run's record into `directory`; the number of artifact files written."""
    assert orchestrator.artifacts is not None, "the orchestrator is started"
    pool = orchestrator.db.pool
    manifest = await pool.fetchval("SELECT manifest FROM runs WHERE id = $1", run_id)
    job_ids = {r["key"]: r["id"] for r in await pool.fetch(
        "SELECT key, id FROM jobs WHERE run_id = $1", run_id)}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    written = 0
    for job in manifest["jobs"]:
        for artifact in job["artifacts"]:
            target = directory / member_name(job["key"], job["attempt"], artifact["path"])
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                async for chunk in orchestrator.artifacts.read(job_ids[job["key"]],
                                                               job["attempt"], artifact["path"]):
                    out.write(chunk)
            written += 1
    return written
