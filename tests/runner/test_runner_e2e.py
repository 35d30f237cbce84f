"""The real runner process against a real grpc.aio Runner service on loopback."""
from __future__ import annotations

from protos import runner_pb2
from tests.runner.double import make_job


async def test_success_streams_output_and_reports(serve, tmp_path):
    job = make_job(("hello", "echo hello; echo oops >&2"),
                   ("env", 'echo "$CI $SOLSTICE_JOB_ID $SOLSTICE_RUN_ID $FOO $SOLSTICE_MATRIX_RUST_VERSION"'),
                   env={"FOO": "bar"}, matrix={"rust-version": "stable"})
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_SUCCESS
    assert s.result.last_log_seq == s.last_seq
    assert s.output(0, runner_pb2.STDOUT) == b"hello\n"
    assert s.output(0, runner_pb2.STDERR) == b"oops\n"
    assert s.output(1, runner_pb2.STDOUT) == b"true job-1 run-1 bar stable\n"
    assert s.states() == {0: ["STEP_RUNNING", "STEP_SUCCESS"], 1: ["STEP_RUNNING", "STEP_SUCCESS"]}
    assert [c.seq for c in s.chunks] == list(range(1, s.last_seq + 1))
