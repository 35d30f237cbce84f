"""`cidev run` as a user runs it: a subprocess, the embedded PostgreSQL, the real runner."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
CIDEV = [sys.executable, "-m", "cidev.main"]

FAILING = '''
workflow name="failing" {
    job id="prepare" runs_on="local" { step name="ok" run="echo prepared"; }
    job id="deploy" runs_on="local" {
        needs "prepare"
        secrets "DEPLOY_TOKEN"
        step name="use it" run="echo token=$DEPLOY_TOKEN; exit 4"
        step name="never" run="echo never"
    }
    job id="unrelated" runs_on="local" { step name="x" run="echo unrelated"; }
}
'''


def cidev(args: list[str], state: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    environ.update(XDG_STATE_HOME=str(state), **env)
    return subprocess.run(CIDEV + args, cwd=cwd, env=environ, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL,
                          timeout=240)


def leftovers(state: Path) -> list[str]:
    """Machine directories, artifact stores, job processes and postgres servers of this
    state directory."""
    found = [str(p) for p in (state / "solstice").glob("cidev-machines-*/*")]
    found += [str(p) for p in (state / "solstice").glob("cidev-blobs-*")]
    for proc in psutil.process_iter(["pid"]):
        try:
            if str(state) in " ".join(proc.cmdline()) or proc.cwd().startswith(str(state)):
                found.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
def test_hello_example_runs_end_to_end(state: Path) -> None:
    done = cidev(["run", "examples/hello.kdl"], state, REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "\033[" not in out  # not a terminal: no colours
    for key in ("lint", "test[flavour=vanilla]", "test[flavour=chocolate]", "report"):
        assert f"{key} " in out
    assert "workflow present" in out
    assert "test[flavour=chocolate] passed" in out
    assert "run success: 4 of 4 jobs succeeded" in out
    # Step output sits between the step's start and end marks.
    lines = [line.split("|", 1)[1].strip() for line in out.splitlines()
             if line.startswith("report ") and " | " in line]
    start, end = lines.index("> Summarise"), next(i for i, s in enumerate(lines)
                                                  if s.startswith("ok Summarise"))
    assert any("every test passed" in s for s in lines[start:end])
    assert leftovers(state) == []


@pytest.mark.slow
def test_failing_job_selection_and_secrets(tmp_path: Path, state: Path) -> None:
    source = tmp_path / "repo"
    (source / ".solstice").mkdir(parents=True)
    (source / ".solstice" / "workflow.kdl").write_text(FAILING)
    done = cidev(["run", "--job", "deploy", "--secret", "DEPLOY_TOKEN"], state, source,
                 DEPLOY_TOKEN="tok-123456789")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "tok-123456789" not in out + done.stderr
    assert "token=***" in out
    assert "unrelated" not in out  # only the selected job and what it needs
    assert "prepared" in out
    table = out[out.index("JOB "):]
    assert "deploy" in table and "failure" in table and "exit code 4" in table
    assert "run failure: 1 of 2 jobs succeeded" in out
    assert leftovers(state) == []


def test_invalid_workflow_is_reported_like_validate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.kdl"
    bad.write_text('workflow {\n    job id="a" {\n        step name="x"\n    }\n}\n')
    run = cidev(["run", str(bad)], tmp_path / "state", tmp_path)
    validate = cidev(["validate", str(bad)], tmp_path / "state", tmp_path)
    assert run.returncode == validate.returncode == 1
    assert run.stderr == validate.stderr
    assert f"{bad}:2:" in run.stderr
    assert not (tmp_path / "state" / "solstice" / "pgdata").exists()  # nothing was started


def test_unknown_job_is_a_usage_error(tmp_path: Path) -> None:
    done = cidev(["run", "--job", "nope", "examples/hello.kdl"], tmp_path / "state", REPO)
    assert done.returncode == 2
    assert "no job 'nope'" in done.stderr and "lint" in done.stderr


def test_a_secret_without_a_value_is_a_usage_error(tmp_path: Path) -> None:
    done = cidev(["run", "--secret", "NOT_SET_ANYWHERE", "examples/hello.kdl"],
                 tmp_path / "state", REPO)
    assert done.returncode == 2
    assert "secret NOT_SET_ANYWHERE has no value" in done.stderr


CELLS = '''
workflow name="cells" {
    job id="unit" runs_on="local" { step name="u" run="echo unit failing; exit 1"; }
    job id="after" runs_on="local" { needs "unit"; step name="a" run="echo never"; }
    job id="test" runs_on="local" {
        matrix {
            python "3.11" "3.12"
            mode "fast" "slow"
        }
        step name="t" run="echo cell=${{ matrix.python }}-${{ matrix.mode }}"
    }
}
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_one_matrix_cell_from_a_subdirectory_of_a_dirty_tree(tmp_path: Path, state: Path) -> None:
    # What the runner itself says of the tree is tested in tests/runner/test_messages.py.
    repo = tmp_path / "repo"
    (repo / ".solstice").mkdir(parents=True)
    (repo / ".solstice" / "workflow.kdl").write_text(CELLS)
    (repo / "src").mkdir()
    (repo / "src" / "a.txt").write_text("committed\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    commit = git(repo, "rev-parse", "HEAD")
    (repo / "src" / "a.txt").write_text("changed, not committed\n")

    done = cidev(["run", "--job", "test[python=3.11, mode=fast]", "--job", "after"], state,
                 repo / "src")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert (f"running ../.solstice/workflow.kdl from {repo}, commit {commit[:12]} with "
            "uncommitted changes") in out
    assert "cell=3.11-fast" in out
    assert "cell=3.12" not in out and "cell=3.11-slow" not in out
    assert "job skipped: needed unit, which did not succeed" in out
    assert "skipped: skipped" not in out
    # How `unit` ended is told once in the log (and once in the table), not three times.
    assert out.count("step 'u' failed with exit code 1") == 2
    assert re.search(r"^unit +\| job failure$", out, re.MULTILINE)
    assert "run failure: 1 of 3 jobs succeeded" in out
    assert leftovers(state) == []


@pytest.mark.slow
def test_a_directory_outside_git_is_not_called_a_commit(tmp_path: Path, state: Path) -> None:
    plain = tmp_path / "plain"
    (plain / ".solstice").mkdir(parents=True)
    (plain / ".solstice" / "workflow.kdl").write_text(
        'workflow { job id="one" runs_on="local" { step name="s" run="echo [$SOLSTICE_COMMIT]"; }; }')
    done = cidev(["run", str(plain)], state, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"from {plain}, not a git repository" in done.stdout
    assert "[]" in done.stdout and "0000000" not in done.stdout
    assert leftovers(state) == []


def test_a_declared_secret_not_given_is_refused_before_any_job(tmp_path: Path) -> None:
    source = tmp_path / "repo"
    (source / ".solstice").mkdir(parents=True)
    (source / ".solstice" / "workflow.kdl").write_text(FAILING)
    done = cidev(["run", "--job", "deploy"], tmp_path / "state", source)
    assert done.returncode == 2
    assert "secret DEPLOY_TOKEN (needed by deploy) not given" in done.stderr
    assert "pass --secret DEPLOY_TOKEN" in done.stderr
    assert "prepared" not in done.stdout  # the job it needs did not run either
    assert not (tmp_path / "state" / "solstice" / "pgdata").exists()  # nothing was started
    unrelated = cidev(["run", "--job", "unrelated"], tmp_path / "state", source)
    assert "DEPLOY_TOKEN" not in unrelated.stderr  # only the selected jobs' secrets count


def test_an_unknown_matrix_cell_is_a_usage_error(tmp_path: Path) -> None:
    done = cidev(["run", "--job", "test[flavour=strawberry]", "examples/hello.kdl"],
                 tmp_path / "state", REPO)
    assert done.returncode == 2
    assert "no job 'test[flavour=strawberry]'" in done.stderr
    assert "test[flavour=vanilla]" in done.stderr


@pytest.mark.slow
def test_the_record_of_a_local_run_outlives_its_database(tmp_path: Path, state: Path) -> None:
    source = tmp_path / "repo"
    (source / ".solstice").mkdir(parents=True)
    (source / ".solstice" / "workflow.kdl").write_text('''
workflow name="pkg" {
    job id="build" runs_on="local" {
        artifacts "dist/*.tar" required=#true
        step name="make" run="mkdir -p dist out && printf tar > dist/a.tar && printf log > out/build.log"
    }
}''')
    record = tmp_path / "record"
    done = cidev(["run", "--record", str(record)], state, source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"in {record}" in done.stdout
    manifest = json.loads((record / "manifest.json").read_text())
    assert manifest["gate"]["status"] == "accepted"
    assert [a["path"] for a in manifest["jobs"][0]["artifacts"]] == ["dist/a.tar", "out/build.log"]
    assert (record / "jobs/build/attempt-1/dist/a.tar").read_bytes() == b"tar"
    assert (record / "jobs/build/attempt-1/out/build.log").read_bytes() == b"log"
    assert leftovers(state) == []
