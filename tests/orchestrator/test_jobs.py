"""Jobs end to end: real gRPC server, real runner process, real Postgres."""
from __future__ import annotations

from common.messages import JobState
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
