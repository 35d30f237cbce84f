"""The real runner process against a real grpc.aio Runner service on loopback."""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

from protos import runner_pb2
from tests.runner.double import TOKEN, alive, make_job, sha256


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


async def test_failing_step_stops_the_job_and_later_steps_are_skipped(serve, tmp_path):
    job = make_job(("ok", "echo one"), ("off", "echo never", 0, False),
                   ("bad", "echo before; false; echo after"), ("later", "echo never"))
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_FAILURE
    assert "'bad' failed with exit code 1" in s.result.message
    assert s.states() == {0: ["STEP_RUNNING", "STEP_SUCCESS"], 1: ["STEP_SKIPPED"],
                          2: ["STEP_RUNNING", "STEP_FAILURE"], 3: ["STEP_SKIPPED"]}
    failed = [r for r in s.steps if r.state == runner_pb2.STEP_FAILURE][0]
    assert failed.exit_code == 1 and failed.duration_ms < 5000
    assert s.output(2, runner_pb2.STDOUT) == b"before\n"
    assert b"never" not in s.output()


async def test_pipefail_is_on(serve, tmp_path):
    harness = await serve(make_job(("pipe", "false | cat")))
    code, stderr = await harness.run_runner(tmp_path / "ws")
    assert code == 0, stderr
    assert harness.servicer.result.outcome == runner_pb2.JOB_FAILURE


async def test_step_timeout_kills_the_whole_process_group(serve, tmp_path):
    job = make_job(("slow", "sleep 300 & echo $! > bg.pid; trap '' TERM; sleep 300", 1),
                   ("after", "echo never"))
    harness = await serve(job)
    started = time.monotonic()
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert time.monotonic() - started < 8
    assert s.result.outcome == runner_pb2.JOB_TIMED_OUT
    assert "'slow' timed out after 1 s" in s.result.message
    assert s.states() == {0: ["STEP_RUNNING", "STEP_TIMED_OUT"], 1: ["STEP_SKIPPED"]}
    pid = int((tmp_path / "ws" / "bg.pid").read_text())
    assert not alive(pid)
    assert b"timed out" in s.output(0, runner_pb2.SYSTEM)


async def test_job_timeout(serve, tmp_path):
    job = make_job(("first", "echo quick"), ("slow", "sleep 30"), ("after", "true"),
                   timeout_seconds=1)
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_TIMED_OUT
    assert "job timed out after 1 s during step 'slow'" in s.result.message
    assert s.states()[1] == ["STEP_RUNNING", "STEP_TIMED_OUT"]
    assert s.states()[2] == ["STEP_SKIPPED"]


async def test_cancel_mid_step(serve, tmp_path):
    job = make_job(("long", "echo started; sleep 30 & echo $! > bg.pid; wait"), ("after", "true"))
    harness = await serve(job)
    s = harness.servicer
    proc = await harness.start_runner(tmp_path / "ws")
    await s.wait_until(lambda: b"started" in s.output(0))
    s.cancel_reason = "cancelled by alice"
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_CANCELLED
    assert "cancelled by alice" in s.result.message
    assert s.states() == {0: ["STEP_RUNNING", "STEP_CANCELLED"], 1: ["STEP_SKIPPED"]}
    assert not alive(int((tmp_path / "ws" / "bg.pid").read_text()))


async def test_secrets_are_injected_and_masked_even_split_across_writes(serve, tmp_path):
    key = "-----BEGIN KEY-----\nAAAAkeyline1\nBBBBkeyline2\n-----END KEY-----"
    job = make_job(("leak", "printf 'A sup3r-s'; sleep 0.3; printf '3cret-value B\\n'; "
                            'echo "$DEPLOY_KEY"; echo "token=${SOLSTICE_TOKEN:-unset}"; '
                            'echo "tail sup3r-s3cret-value" >&2; printf "no newline sup3r-s3cret-value"'),
                   secrets={"PASSWORD": "sup3r-s3cret-value", "DEPLOY_KEY": key})
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_SUCCESS
    out = s.output(0, runner_pb2.STDOUT)
    assert out == (b"A *** B\n***\n***\n***\n***\n"
                   b"token=unset\nno newline ***")
    assert s.output(0, runner_pb2.STDERR) == b"tail ***\n"
    everything = s.output()
    for value in (b"sup3r-s3cret-value", b"keyline", TOKEN.encode()):
        assert value not in everything
        assert value.decode() not in stderr


async def test_wrong_token_is_final(serve, tmp_path):
    harness = await serve(make_job(("never", "touch ran")))
    code, stderr = await harness.run_runner(tmp_path / "ws", SOLSTICE_TOKEN="wrong-token")
    assert code == 3
    assert "token refused" in stderr and "UNAUTHENTICATED" in stderr
    assert harness.servicer.refused == ["GetJob"]
    assert harness.servicer.result is None
    assert not (tmp_path / "ws" / "ran").exists()


async def test_reused_token_is_refused(serve, tmp_path):
    harness = await serve(make_job(("ok", "true")))
    assert (await harness.run_runner(tmp_path / "ws"))[0] == 0
    code, stderr = await harness.run_runner(tmp_path / "ws2")
    assert code == 3, stderr


async def test_token_dying_mid_job_stops_the_runner_and_its_steps(serve, tmp_path):
    harness = await serve(make_job(("long", "echo started; sleep 30 & echo $! > bg.pid; wait")))
    s = harness.servicer
    proc = await harness.start_runner(tmp_path / "ws")
    await s.wait_until(lambda: b"started" in s.output(0))
    s.token = "rotated"
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 3, stderr
    assert b"token refused" in stderr
    assert not alive(int((tmp_path / "ws" / "bg.pid").read_text()))


async def test_100k_lines_arrive_complete_and_in_order(serve, tmp_path):
    harness = await serve(make_job(("many", "seq 1 100000; echo done >&2")))
    started = time.monotonic()
    code, stderr = await harness.run_runner(tmp_path / "ws")
    elapsed = time.monotonic() - started
    s = harness.servicer
    assert code == 0, stderr
    expected = b"".join(b"%d\n" % i for i in range(1, 100001))
    assert s.output(0, runner_pb2.STDOUT) == expected
    assert [c.seq for c in s.chunks] == list(range(1, s.last_seq + 1))
    assert s.result.last_log_seq == s.last_seq
    assert len(s.chunks) < 200  # batched, not one message per line
    assert elapsed < 10


async def test_log_stream_dropped_once_resumes_without_gap_or_duplicate(serve, tmp_path):
    harness = await serve(make_job(("ticks", "for i in $(seq 1 60); do echo line $i; sleep 0.005; done")))
    s = harness.servicer
    s.drop_log_stream_after = 4
    s.forget_on_drop = 2
    code, stderr = await harness.run_runner(tmp_path / "ws")
    assert code == 0, stderr
    assert s.drop_log_stream_after is None  # the drop happened
    assert s.output(0) == b"".join(b"line %d\n" % i for i in range(1, 61))
    assert [c.seq for c in s.chunks] == list(range(1, s.last_seq + 1))
    assert not s.gaps


async def test_orchestrator_restart_mid_stream_loses_nothing(serve, tmp_path):
    harness = await serve(make_job(("ticks", "for i in $(seq 1 150); do echo line $i; sleep 0.01; done")))
    s = harness.servicer
    proc = await harness.start_runner(tmp_path / "ws")
    await s.wait_until(lambda: s.last_seq >= 3)
    await harness.stop()
    await asyncio.sleep(0.7)
    await harness.start()
    async with asyncio.timeout(15):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr
    assert s.output(0) == b"".join(b"line %d\n" % i for i in range(1, 151))
    assert [c.seq for c in s.chunks] == list(range(1, s.last_seq + 1))
    assert not s.gaps
    assert s.result.outcome == runner_pb2.JOB_SUCCESS


async def test_artifacts_are_uploaded_with_sha256_even_when_a_step_failed(serve, tmp_path):
    job = make_job(("build", "mkdir -p out/sub && echo hello > out/a.txt && "
                             "head -c 600000 /dev/urandom > out/sub/b.bin && : > out/empty && "
                             "ln -s /etc/hostname out/link && ln -s a.txt out/alias"),
                   ("test", "exit 3"),
                   artifact_patterns=["out/**/*", "../escape", "/etc/passwd"])
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_FAILURE
    ws = tmp_path / "ws"
    assert sorted(s.artifacts) == ["out/a.txt", "out/alias", "out/empty", "out/sub/b.bin"]
    for path, artifact in s.artifacts.items():
        data = (ws / path).read_bytes()
        assert artifact.data == data and artifact.size == len(data)
        assert artifact.sha256 == sha256(data)
    system = s.output(-1, runner_pb2.SYSTEM)
    assert b"'../escape' ignored" in system and b"'/etc/passwd' ignored" in system
    assert b"out/link skipped" in system


def make_repo(path: Path) -> tuple[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True,
                              text=True, env={**os.environ, "GIT_AUTHOR_NAME": "t",
                                              "GIT_AUTHOR_EMAIL": "t@example.org",
                                              "GIT_COMMITTER_NAME": "t",
                                              "GIT_COMMITTER_EMAIL": "t@example.org"}).stdout.strip()
    path.mkdir()
    git("init", "-q", "-b", "main")
    (path / "f.txt").write_text("first\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "first")
    first = git("rev-parse", "HEAD")
    (path / "f.txt").write_text("second\n")
    git("commit", "-q", "-am", "second")
    return first, git("rev-parse", "HEAD")


async def test_checkout_of_an_exact_commit_from_a_real_repository(serve, tmp_path):
    first, _second = make_repo(tmp_path / "repo")
    job = make_job(("show", "cat f.txt; git rev-parse HEAD"),
                   checkout=runner_pb2.Checkout(repo_url=f"file://{tmp_path}/repo", commit=first,
                                                ref="refs/heads/main", username="ci",
                                                password="clone-pass-123"))
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_SUCCESS, s.output()
    assert s.output(0, runner_pb2.STDOUT) == f"first\n{first}\n".encode()
    assert b"clone-pass-123" not in (tmp_path / "ws" / ".git" / "config").read_bytes()
    assert b"clone-pass-123" not in s.output() and "clone-pass-123" not in stderr


async def test_checkout_failure_is_an_infrastructure_error(serve, tmp_path):
    make_repo(tmp_path / "repo")
    job = make_job(("never", "true"),
                   checkout=runner_pb2.Checkout(repo_url=f"file://{tmp_path}/repo",
                                                commit="1" * 40, ref="refs/heads/nope"))
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_ERROR
    assert "checkout of" in s.result.message and "failed" in s.result.message
    assert s.states() == {0: ["STEP_SKIPPED"]}


async def test_a_job_with_no_source_runs_in_an_empty_workspace(serve, tmp_path):
    job = make_job(("look", "ls -A | wc -l"), checkout=runner_pb2.Checkout())
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_SUCCESS, s.output()
    assert s.output(0, runner_pb2.STDOUT) == b"0\n"
    assert b"no repository to check out: the workspace starts empty" in s.output()


async def test_a_repository_without_a_commit_is_an_error(serve, tmp_path):
    job = make_job(("never", "true"),
                   checkout=runner_pb2.Checkout(repo_url=f"file://{tmp_path}/repo"))
    harness = await serve(job)
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_ERROR
    assert "a repository URL without a commit" in s.result.message
    assert s.states() == {0: ["STEP_SKIPPED"]}


async def test_setup_script_runs_before_steps_and_its_failure_fails_the_job(serve, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "setup.sh").write_text("echo setting up\n")
    harness = await serve(make_job(("step", "echo stepping"), setup_script="setup.sh"))
    code, stderr = await harness.run_runner(ws)
    assert code == 0, stderr
    assert harness.servicer.output(-1, runner_pb2.STDOUT) == b"setting up\n"
    assert harness.servicer.result.outcome == runner_pb2.JOB_SUCCESS

    ws2 = tmp_path / "ws2"
    ws2.mkdir()
    (ws2 / "setup.sh").write_text("echo broken; false; echo not here\n")
    harness = await serve(make_job(("step", "echo stepping"), setup_script="setup.sh"))
    code, stderr = await harness.run_runner(ws2)
    assert code == 0, stderr
    s = harness.servicer
    assert s.result.outcome == runner_pb2.JOB_FAILURE
    assert "setup script setup.sh failed with exit code 1" in s.result.message
    assert s.states() == {0: ["STEP_SKIPPED"]}
    assert b"not here" not in s.output()


async def test_output_produced_while_the_orchestrator_is_away_spills_and_arrives(serve, tmp_path):
    """With a 64 KiB memory budget, 1 MB produced during an outage goes through the spill
    file and still arrives whole and in order."""
    harness = await serve(make_job(("burst", "echo first; sleep 0.5; seq 1 150000; sleep 0.5; echo last")))
    s = harness.servicer
    proc = await harness.start_runner(tmp_path / "ws", SOLSTICE_LOG_MEMORY_BYTES="65536")
    await s.wait_until(lambda: b"first" in s.output(0))
    await harness.stop()
    await asyncio.sleep(1.2)
    await harness.start()
    async with asyncio.timeout(15):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr
    expected = b"first\n" + b"".join(b"%d\n" % i for i in range(1, 150001)) + b"last\n"
    assert s.output(0) == expected
    assert [c.seq for c in s.chunks] == list(range(1, s.last_seq + 1))


async def test_background_process_of_a_finished_step_does_not_hold_the_job(serve, tmp_path):
    harness = await serve(make_job(("bg", "sleep 30 & echo $! > bg.pid; echo started"),
                                   ("next", "echo next")))
    started = time.monotonic()
    code, stderr = await harness.run_runner(tmp_path / "ws")
    s = harness.servicer
    assert code == 0, stderr
    assert s.result.outcome == runner_pb2.JOB_SUCCESS
    assert s.output(0, runner_pb2.STDOUT) == b"started\n"
    assert s.output(1, runner_pb2.STDOUT) == b"next\n"
    assert time.monotonic() - started < 8
    assert not alive(int((tmp_path / "ws" / "bg.pid").read_text()))


async def test_a_silent_control_stream_is_reopened_and_still_delivers_cancel(serve, tmp_path):
    harness = await serve(make_job(("long", "echo started; sleep 30")))
    s = harness.servicer
    s.silent_heartbeats = 1
    s.cancel_reason = "stop now"
    proc = await harness.start_runner(tmp_path / "ws")
    async with asyncio.timeout(15):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr
    assert s.heartbeat_calls >= 2
    assert b"no answer to heartbeats" in stderr
    assert s.result.outcome == runner_pb2.JOB_CANCELLED
