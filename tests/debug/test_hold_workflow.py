"""`hold_on_failure` in a workflow: on the workflow or a job, checked by `cidev validate`,
carried into the job's spec (the job's own wins)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.workflow import load_workflow
from common.workflow.plan import expand
from orchestrator.intake import job_spec, run_context
from tests.orchestrator.conftest import run_request

WORKFLOW = """
workflow name="w" hold_on_failure="15m" {
    job id="a" runs_on="x" { step name="a" run="a"; }
    job id="b" runs_on="x" hold_on_failure="1h" { step name="b" run="b"; }
}
"""


def test_workflow_and_job_hold_reach_the_spec(tmp_path: Path) -> None:
    workflow = load_workflow(WORKFLOW)
    ctx = run_context(run_request(WORKFLOW, tmp_path))
    specs = {p.key: job_spec(workflow, p, ctx, 3600) for p in expand(workflow)}
    assert specs["a"]["hold_on_failure"] == 15 * 60
    assert specs["b"]["hold_on_failure"] == 3600
    plain = load_workflow('workflow { job id="c" runs_on="x" { step name="c" run="c"; }; }')
    assert job_spec(plain, expand(plain)[0], ctx, 3600)["hold_on_failure"] is None


def test_cidev_validate_accepts_and_rejects_hold_on_failure(tmp_path: Path) -> None:
    good = tmp_path / "good.kdl"
    good.write_text(WORKFLOW)
    bad = tmp_path / "bad.kdl"
    bad.write_text(WORKFLOW.replace('"1h"', '"soon"'))
    ok = subprocess.run([sys.executable, "-m", "cidev.main", "validate", str(good)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = subprocess.run([sys.executable, "-m", "cidev.main", "validate", str(bad)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "hold_on_failure of job is not a duration" in refused.stdout + refused.stderr
