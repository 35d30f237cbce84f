"""Jobs end to end: real gRPC server, real runner process, real Postgres."""
from __future__ import annotations

import os
import signal

from common.messages import JobState
from tests.joblog import stored_chunks
from tests.orchestrator.conftest import Harness

ONE_JOB = '''
workflow name="one" {
    job id="hello" runs_on="local" {
        step name="Greet" run="echo hello; cat hello.txt"
        step name="Second" run="echo second >&2"
    }
}
'''


async def test_one_job_succeeds(harness: Harness) -> None:
    summary = await harness.run(ONE_JOB)
    assert summary.state == "success", summary
    [job] = summary.jobs
    assert job.state == JobState.SUCCESS
    assert [s.state for s in job.steps] == ["success", "success"]
    assert all(s.exit_code == 0 and s.duration_ms is not None for s in job.steps)
    logs = await harness.logs(job.job_id)
    assert b"hello\nhello from the source tree\n" in logs
    assert b"second\n" in logs


def job(summary, key: str):
    return next(j for j in summary.jobs if j.key == key)


async def test_failing_step_fails_the_job_and_skips_the_rest(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="j" runs_on="local" {
        step name="ok" run="echo fine"
        step name="bad" run="echo about to fail; exit 3"
        step name="never" run="echo never"
    }
}''')
    assert summary.state == "failure"
    [j] = summary.jobs
    assert j.state == JobState.FAILURE
    assert "bad" in j.message and "3" in j.message
    assert [(s.state, s.exit_code) for s in j.steps] == [
        ("success", 0), ("failure", 3), ("skipped", None)]
    assert b"never\n" not in await harness.logs(j.job_id)


async def test_step_timeout(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="j" runs_on="local" {
        step name="slow" run="echo start; sleep 30" timeout="1s"
        step name="after" run="echo after"
    }
}''')
    [j] = summary.jobs
    assert j.state == JobState.TIMED_OUT, j.message
    assert [s.state for s in j.steps] == ["timed_out", "skipped"]
    assert j.duration_s is not None and j.duration_s < 10


async def test_job_timeout(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="j" runs_on="local" timeout="2s" {
        step name="first" run="echo first"
        step name="slow" run="sleep 30"
    }
}''')
    [j] = summary.jobs
    assert j.state == JobState.TIMED_OUT, j.message
    assert [s.state for s in j.steps] == ["success", "timed_out"]


async def test_cancel_mid_step(harness: Harness) -> None:
    with harness.api.watch() as watch:
        run_id = await harness.submit('''
workflow {
    job id="j" runs_on="local" {
        step name="long" run="echo started; sleep 60"
        step name="after" run="echo after"
    }
}''')
        await harness.wait_step(watch, "running")
        await harness.api.cancel_run(run_id, "cancelled by the test")
    summary = await harness.api.wait(run_id)
    assert summary.state == "cancelled"
    [j] = summary.jobs
    assert j.state == JobState.CANCELLED
    assert "cancelled by the test" in j.message
    assert [s.state for s in j.steps] == ["cancelled", "skipped"]
    assert j.duration_s is not None and j.duration_s < 20


async def test_runner_killed_mid_step_ends_error(harness: Harness) -> None:
    with harness.api.watch() as watch:
        run_id = await harness.submit('''
workflow {
    job id="j" runs_on="local" {
        step name="long" run="sleep 60"
    }
}''')
        update = await harness.wait_step(watch, "running")
    pid = int(next(harness.machines.glob("*/runner.pid")).read_text())
    os.kill(pid, signal.SIGKILL)
    summary = await harness.api.wait(run_id)
    [j] = summary.jobs
    assert j.job_id == update.job_id
    assert j.state == JobState.ERROR
    assert "killed by signal 9 before reporting a result" in j.message
    assert [s.state for s in j.steps] == ["cancelled"]


async def test_dag_with_a_failing_need(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="a" runs_on="local" { step name="fail" run="exit 1"; }
    job id="b" runs_on="local" { needs "a"; step name="x" run="echo b"; }
    job id="c" runs_on="local" { needs "b"; step name="x" run="echo c"; }
    job id="d" runs_on="local" { step name="x" run="echo d"; }
    job id="e" runs_on="local" { needs "d"; step name="x" run="echo e"; }
}''')
    assert summary.state == "failure"
    states = {j.key: j.state for j in summary.jobs}
    assert states == {"a": JobState.FAILURE, "b": JobState.SKIPPED, "c": JobState.SKIPPED,
                      "d": JobState.SUCCESS, "e": JobState.SUCCESS}
    assert "a" in job(summary, "b").message
    e, d = job(summary, "e"), job(summary, "d")
    assert e.started_at >= d.finished_at


async def test_matrix(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="build" runs_on="local" {
        matrix { os "alpha" "beta"; }
        step name="on ${{ matrix.os }}" run="echo os=${{ matrix.os }} env=$SOLSTICE_MATRIX_OS"
    }
    job id="after" runs_on="local" { needs "build"; step name="x" run="echo done"; }
}''')
    assert summary.state == "success", summary
    keys = sorted(j.key for j in summary.jobs)
    assert keys == ["after", "build[os=alpha]", "build[os=beta]"]
    for axis in ("alpha", "beta"):
        j = job(summary, f"build[os={axis}]")
        assert j.steps[0].name == f"on {axis}"
        assert f"os={axis} env={axis}\n".encode() in await harness.logs(j.job_id)


async def test_fail_fast_cancels_running_siblings(harness: Harness) -> None:
    summary = await harness.run('''
workflow fail_fast=#true {
    job id="slow" runs_on="local" { step name="x" run="sleep 60"; }
    job id="quick" runs_on="local" { step name="x" run="sleep 1; exit 1"; }
    job id="later" runs_on="local" { needs "slow"; step name="x" run="echo later"; }
}''')
    states = {j.key: j.state for j in summary.jobs}
    # Everything not yet ended is cancelled, queued or running.
    assert states == {"slow": JobState.CANCELLED, "quick": JobState.FAILURE,
                      "later": JobState.CANCELLED}
    assert summary.state == "failure"


async def test_log_order_and_completeness_100k_lines(harness: Harness) -> None:
    summary = await harness.run('''
workflow {
    job id="j" runs_on="local" { step name="count" run="seq 1 100000"; }
}''')
    [j] = summary.jobs
    assert j.state == JobState.SUCCESS
    chunks = await stored_chunks(harness.orchestrator, j.job_id)
    data = b"".join(c.data for c in chunks if c.step_index == 0 and c.stream == 1)
    assert data == b"".join(b"%d\n" % i for i in range(1, 100001))
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
