"""docs/steps.md names what the runner really gives a step: its shell and every variable."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from protos import runner_pb2
from workflow_runner.job import shell_argv, step_env

DOC = (Path(__file__).resolve().parents[2] / "docs" / "steps.md").read_text()


def test_every_ci_variable_a_step_gets_is_documented() -> None:
    job = runner_pb2.Job(job_id="j", run_id="r", job_key="k[rust-version=1]",
                         checkout=runner_pb2.Checkout(commit="c", ref="refs/heads/main"),
                         matrix={"rust-version": "1"}, env={"OWN": "x"})
    env = step_env(job, Path("/ws"), {"PATH": "/bin", "SOLSTICE_TOKEN": "secret"})
    ours = {name for name in env if name == "CI" or name.startswith("SOLSTICE_")}
    assert "SOLSTICE_TOKEN" not in ours  # the bootstrap never reaches a step
    assert "SOLSTICE_MATRIX_RUST_VERSION" in ours
    for name in ours - {"SOLSTICE_MATRIX_RUST_VERSION"}:
        assert f"`{name}`" in DOC, f"{name} is not in docs/steps.md"
    assert "`SOLSTICE_MATRIX_<AXIS>`" in DOC and "SOLSTICE_MATRIX_RUST_VERSION" in DOC


@pytest.mark.skipif(shutil.which("bash") is None, reason="the bash form needs bash")
def test_the_documented_shell_is_the_one_used() -> None:
    argv = shell_argv("true")
    assert " ".join(["bash", *argv[1:-1]]) + ' "$run"' in DOC
