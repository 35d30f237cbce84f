"""The run record: manifest.json written when a run ends, its schema, and the gate.

Real runs (real Postgres, gRPC, runner processes on the local backend); the manifest is read
back the way an operator reads it, with `ciadm manifest`, and validated against the schema
committed in the repository.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema

from orchestrator import manifest as manifest_module
from orchestrator.manifest import JobRecord, evaluate_gate
from tests.ciadm.test_admin import ciadm
from tests.orchestrator.conftest import Harness

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "docs" / "schemas" / "manifest.schema.json"

RELEASE = '''
workflow name="release" {
    job id="build" runs_on="local" {
        artifacts "dist/*.tar" required=#true
        step name="Compile" run="mkdir -p dist out/pkg && printf tarball > dist/app.tar && printf p5p > out/pkg/app.p5p"
    }
    job id="docs" runs_on="local" {
        if "event == 'tag'"
        step name="Docs" run="echo docs"
    }
    job id="test" runs_on="local" {
        needs "build"
        step name="Test" run="echo tested; exit 0"
    }
}
'''




def validate(document: dict) -> None:
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))


def test_committed_schema_is_the_models_schema() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == manifest_module.schema(), (
        "docs/schemas/manifest.schema.json is stale: regenerate it with "
        "`python -m orchestrator.manifest --schema > docs/schemas/manifest.schema.json`")


async def test_an_accepted_run_records_jobs_steps_and_artifacts(harness: Harness) -> None:
    summary = await harness.run(RELEASE)
    assert summary.state == "success", summary

    shown = await ciadm(harness, "manifest", str(summary.run_id))
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    validate(document)

    assert document["run_id"] == str(summary.run_id)
    assert document["workflow"]["name"] == "release"
    assert document["workflow"]["sha256"] == hashlib.sha256(RELEASE.encode()).hexdigest()
    assert document["trigger"]["commit"] and document["trigger"]["event"] == "push"
    assert document["gate"] == {"status": "accepted", "reasons": []}
    jobs = {j["key"]: j for j in document["jobs"]}
    build = jobs["build"]
    assert build["state"] == "success" and build["attempt"] == 1 and build["exit_code"] == 0
    assert build["backend"] == "local" and build["host"] == harness.orchestrator.config.host_name
    assert [s["name"] for s in build["steps"]] == ["Compile"]
    # The listed pattern and the out/ contract, each file with its real digest.
    assert build["artifacts"] == [
        {"path": "dist/app.tar", "size": 7, "sha256": hashlib.sha256(b"tarball").hexdigest()},
        {"path": "out/pkg/app.p5p", "size": 3, "sha256": hashlib.sha256(b"p5p").hexdigest()},
    ]
    assert build["required_artifacts"] == ["dist/*.tar"]
    assert jobs["docs"]["state"] == "skipped"  # by its own `if`: not a reason to quarantine
    assert "gate: accepted" in (await ciadm(harness, "show", str(summary.run_id))).stdout


async def test_a_missing_required_artifact_quarantines_the_run(harness: Harness) -> None:
    summary = await harness.run('''
workflow name="forgetful" {
    job id="build" runs_on="local" {
        artifacts "dist/*.iso" required=#true
        artifacts "logs/*.txt"
        step name="Compile" run="mkdir -p dist && echo no iso > dist/readme"
    }
    job id="flaky" runs_on="local" {
        step name="Fail" run="exit 4"
    }
    job id="after" runs_on="local" {
        needs "flaky"
        step name="Never" run="echo never"
    }
}''')
    assert summary.state == "failure"
    shown = await ciadm(harness, "show", str(summary.run_id))
    assert "gate: quarantined" in shown.stdout, shown.stdout
    assert "no artifact matching required pattern 'dist/*.iso'" in shown.stdout
    document = json.loads((await ciadm(harness, "manifest", str(summary.run_id))).stdout)
    validate(document)
    reasons = document["gate"]["reasons"]
    assert document["gate"]["status"] == "quarantined"
    assert any(r.startswith("job build produced no artifact") for r in reasons)
    assert any(r.startswith("job flaky ended failure") for r in reasons)
    assert any(r.startswith("job after ended skipped") for r in reasons)
    flaky = next(j for j in document["jobs"] if j["key"] == "flaky")
    assert flaky["exit_code"] == 4


async def test_manifest_of_a_running_run_is_refused(harness: Harness) -> None:
    run_id = await harness.submit('''
workflow { job id="slow" runs_on="local" { step name="Sleep" run="sleep 30" } }''')
    shown = await ciadm(harness, "manifest", str(run_id))
    assert shown.returncode == 1
    assert "has not ended" in shown.stderr
    await harness.api.cancel_run(run_id)


def _job(key: str, state: str, message: str = "", artifacts: tuple[str, ...] = (),
         required: tuple[str, ...] = ()) -> JobRecord:
    return JobRecord.model_validate({
        "key": key, "label": "local", "attempt": 1, "state": state, "message": message,
        "created_at": "2026-11-30T00:00:00Z", "steps": [],
        "artifacts": [{"path": p, "size": 1, "sha256": "0" * 64} for p in artifacts],
        "required_artifacts": list(required)})


def test_gate_reads_only_the_records() -> None:
    assert evaluate_gate([_job("a", "success", artifacts=("pkg/x.p5p",),
                               required=("pkg/*.p5p",))]).status == "accepted"
    assert evaluate_gate([_job("a", "skipped", "skipped: if was false")]).status == "accepted"
    gate = evaluate_gate([_job("a", "success", required=("pkg/*.p5p", "iso/*")),
                          _job("b", "cancelled", "cancelled by admin")])
    assert gate.status == "quarantined"
    assert gate.reasons == [
        "job a produced no artifact matching required pattern 'pkg/*.p5p'",
        "job a produced no artifact matching required pattern 'iso/*'",
        "job b ended cancelled: cancelled by admin"]


async def test_bundle_holds_the_manifest_first_then_every_artifact(harness: Harness,
                                                                   tmp_path: Path) -> None:
    import tarfile

    summary = await harness.run(RELEASE)
    target = tmp_path / "record.tar.gz"
    done = await ciadm(harness, "bundle", str(summary.run_id), "-o", str(target))
    assert done.returncode == 0, done.stderr
    printed_digest, printed_name = done.stdout.split()
    assert printed_name == str(target)
    assert printed_digest == hashlib.sha256(target.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.part"))
    with tarfile.open(target, "r:gz") as tar:
        names = tar.getnames()
        assert names == ["manifest.json", "jobs/build/attempt-1/dist/app.tar",
                         "jobs/build/attempt-1/out/pkg/app.p5p"]
        document = json.load(tar.extractfile("manifest.json"))
        validate(document)
        assert tar.extractfile("jobs/build/attempt-1/dist/app.tar").read() == b"tarball"
        assert tar.extractfile("jobs/build/attempt-1/out/pkg/app.p5p").read() == b"p5p"
