"""How solstice-runner finds its orchestrator, job and token, and how it fails without them."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.backends.base import RunnerBootstrap
from orchestrator.backends.cloudinit import runner_toml
from protos import runner_pb2
from tests.runner.double import JOB_ID, TOKEN, alive, make_job
from workflow_runner.config import load_settings


def test_help_documents_the_bootstrap_sources():
    out = subprocess.run([sys.executable, "-m", "workflow_runner.main", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for needle in ("/etc/solstice/runner.toml", "SOLSTICE_RUNNER_CONFIG", "SOLSTICE_TOKEN",
                   "SOLSTICE_ORCHESTRATOR_URL", "SOLSTICE_JOB_ID", "--workspace", "exit status"):
        assert needle in out


def test_environment_overrides_the_file_and_flags_override_both(tmp_path):
    path = tmp_path / "runner.toml"
    path.write_text(runner_toml(RunnerBootstrap("10.0.0.1:7000", "job-a", "tok-a")))
    settings = load_settings(cli={"workspace": "/w"}, environ={
        "SOLSTICE_RUNNER_CONFIG": str(path), "SOLSTICE_JOB_ID": "job-b",
        "SOLSTICE_WORKSPACE": "/ignored"})
    assert (settings.orchestrator_url, settings.job_id, settings.token, settings.workspace) == (
        "10.0.0.1:7000", "job-b", "tok-a", "/w")
    assert "tok-a" not in repr(settings)


def test_missing_bootstrap_is_a_clear_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SOLSTICE_RUNNER_CONFIG": str(tmp_path / "absent.toml")}
    done = subprocess.run([sys.executable, "-m", "workflow_runner.main"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "absent.toml does not exist" in done.stderr
    env["SOLSTICE_RUNNER_CONFIG"] = ""
    done = subprocess.run([sys.executable, "-m", "workflow_runner.main"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "orchestrator_url" in done.stderr and "token" in done.stderr


async def test_runs_from_the_cloud_init_bootstrap_file(serve, tmp_path):
    harness = await serve(make_job(("hi", "echo from file")))
    path = tmp_path / "runner.toml"
    path.write_text(runner_toml(RunnerBootstrap(f"127.0.0.1:{harness.port}", JOB_ID, TOKEN)))
    env = harness.runner_env(tmp_path / "ws", SOLSTICE_RUNNER_CONFIG=str(path))
    for name in ("SOLSTICE_ORCHESTRATOR_URL", "SOLSTICE_JOB_ID", "SOLSTICE_TOKEN"):
        del env[name]
    proc = await harness.start_runner(tmp_path / "ws", env=env)
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr
    assert harness.servicer.output(0) == b"from file\n"


async def test_unreachable_orchestrator_gives_up_with_its_own_exit_code(serve, tmp_path):
    harness = await serve(make_job(("hi", "true")))
    await harness.stop()
    started = time.monotonic()
    code, stderr = await harness.run_runner(tmp_path / "ws",
                                            SOLSTICE_UNREACHABLE_TIMEOUT_SECONDS="1")
    assert code == 4
    assert "unreachable" in stderr
    assert time.monotonic() - started < 8


async def test_sigterm_kills_the_steps_and_exits_without_a_result(serve, tmp_path):
    harness = await serve(make_job(("long", "echo started; sleep 30 & echo $! > bg.pid; wait")))
    s = harness.servicer
    proc = await harness.start_runner(tmp_path / "ws")
    await s.wait_until(lambda: b"started" in s.output(0))
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 5, stderr
    assert s.result is None
    assert not alive(int((tmp_path / "ws" / "bg.pid").read_text()))
    assert s.states() == {0: ["STEP_RUNNING"]}


async def test_default_workspace_is_a_fresh_temp_dir_removed_afterwards(serve, tmp_path):
    harness = await serve(make_job(("where", "pwd; touch made-here")))
    code, stderr = await harness.run_runner(tmp_path / "unused", SOLSTICE_WORKSPACE="")
    assert code == 0, stderr
    where = Path(harness.servicer.output(0).decode().strip())
    assert where.parent == Path("/var/tmp") and where.name.startswith("solstice-job-")
    assert not where.exists()


async def test_a_workspace_that_cannot_be_made_is_an_error_outcome(serve, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    harness = await serve(make_job(("never", "true")))
    code, stderr = await harness.run_runner(tmp_path / "unused",
                                            SOLSTICE_WORKSPACE=str(tmp_path / "file" / "ws"))
    assert code == 0, stderr
    result = harness.servicer.result
    assert result.outcome == runner_pb2.JOB_ERROR
    assert "cannot create the workspace" in result.message
