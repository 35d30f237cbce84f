"""`cidev run` stopped mid-step the ways it is stopped: Ctrl-C (once, twice), SIGTERM from
`timeout` or a CI wrapper, SIGHUP from a closed terminal, and SIGKILL. Nothing of the run is
left behind, and the embedded PostgreSQL still stops when the next run ends."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_cidev_run import CIDEV, cidev, leftovers

SLEEPER = 'workflow { job id="nap" runs_on="local" { step name="sleep" run="echo started; ' \
          'sleep 60"; }; }'
# Ignores the SIGTERM a cancelled step gets: the runner kills it only after its grace period.
STUBBORN = 'workflow { job id="nap" runs_on="local" { step name="sleep" run="trap \'\' TERM; ' \
           'echo started; sleep 60"; }; }'
QUICK = 'workflow { job id="one" runs_on="local" { step name="s" run="echo quick"; }; }'


def repository(path: Path, workflow: str) -> Path:
    (path / ".solstice").mkdir(parents=True)
    (path / ".solstice" / "workflow.kdl").write_text(workflow)
    return path


class Started:
    """A `cidev run` in the background, its output in files."""

    def __init__(self, source: Path, state: Path, logs: Path) -> None:
        self.out, self.err = logs / "stdout", logs / "stderr"
        environ = {**os.environ, "XDG_STATE_HOME": str(state)}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(CIDEV + ["run"], cwd=source, env=environ, stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL)

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out.read_text():
            assert self.proc.poll() is None, self.out.read_text() + self.err.read_text()
            assert time.monotonic() < deadline, f"no {text!r} in {self.out.read_text()}"
            time.sleep(0.05)

    def processes(self) -> list[psutil.Process]:
        """Every process cidev started and that still runs (the launcher, runner, step)."""
        return psutil.Process(self.proc.pid).children(recursive=True)


def survivors(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` still running a few seconds on (the workflow validator's pool
    helper exits on its own once cidev is gone)."""
    return psutil.wait_procs(processes, timeout=5)[1]


def handles(state: Path) -> list[int]:
    """The processes pgserver believes use the embedded server."""
    return json.loads((state / "solstice" / "pgdata" / ".handle_pids.json").read_text())


def next_run_stops_its_database(tmp_path: Path, state: Path) -> None:
    done = cidev(["run"], state, repository(tmp_path / "quick", QUICK))
    assert done.returncode == 0, done.stdout + done.stderr
    assert leftovers(state) == []  # the server's process included
    assert handles(state) == []


@pytest.mark.slow
@pytest.mark.parametrize(("signals", "status"), [
    ((signal.SIGINT,), 130),
    ((signal.SIGTERM,), 143),
    ((signal.SIGHUP,), 129),
], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_mid_step_cancels_the_run_and_leaves_nothing(
        tmp_path: Path, state: Path, signals: tuple[signal.Signals, ...], status: int) -> None:
    run = Started(repository(tmp_path / "repo", SLEEPER), state, tmp_path)
    run.wait_for("started")
    processes = run.processes()
    assert any(p.name() == "sleep" for p in processes)  # the step runs under cidev
    run.proc.send_signal(signals[0])
    assert run.proc.wait(60) == status
    out = run.out.read_text()
    name = "Ctrl-C" if signals[0] == signal.SIGINT else signals[0].name
    assert f"cancelled during step 'sleep': cancelled: interrupted ({name})" in out
    assert "run cancelled: 0 of 1 job succeeded" in out
    assert run.err.read_text() == ""  # no traceback, no log line
    assert survivors(processes) == []
    assert leftovers(state) == []
    next_run_stops_its_database(tmp_path, state)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_still_destroys_the_machine(
        tmp_path: Path, state: Path) -> None:
    run = Started(repository(tmp_path / "repo", STUBBORN), state, tmp_path)
    run.wait_for("started")
    processes = run.processes()
    run.proc.send_signal(signal.SIGINT)
    run.wait_for("interrupted (Ctrl-C): cancelling the run")
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(60) == 130
    out = run.out.read_text()
    assert "stopping now: ending the jobs and destroying their machines" in out
    # It did not wait for the runner to give up on the step (its grace is 5 s), which would
    # have ended the run `cancelled` and printed the table.
    assert "run cancelled" not in out and "JOB " not in out
    assert run.err.read_text() == ""
    assert survivors(processes) == []
    assert leftovers(state) == []
    next_run_stops_its_database(tmp_path, state)


@pytest.mark.slow
def test_a_killed_cidev_does_not_keep_the_database_running_for_ever(
        tmp_path: Path, state: Path) -> None:
    run = Started(repository(tmp_path / "repo", SLEEPER), state, tmp_path)
    run.wait_for("started")
    processes = run.processes()
    run.proc.kill()
    run.proc.wait(10)
    # What SIGKILL leaves of the run itself cannot be helped; this test is about the server.
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=10)
    for left in [*(state / "solstice").glob("cidev-machines-*"),
                 *(state / "solstice").glob("cidev-blobs-*")]:
        shutil.rmtree(left)
    assert handles(state) == [run.proc.pid]
    assert any("postgres" in line for line in leftovers(state))
    next_run_stops_its_database(tmp_path, state)
