"""`ciadm submit`, `rerun`, `drain`/`undrain`, `queue`, `logs RUN` and `--json`, as an
operator runs them: the real CLI in a subprocess against a real orchestrator (standalone
broker, real Postgres, gRPC, the local backend and the real runner)."""
from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from tests.ciadm.test_admin import ciadm
from tests.forge.test_e2e import make_repo
from tests.orchestrator.conftest import ADMIN_TOKEN, Harness

FLAKY = """
workflow name="flaky" {
    job id="flaky" runs_on="local" {
        step name="check" run="echo checking; test -f %(flag)s"
    }
    job id="after" runs_on="local" {
        needs "flaky"
        step name="report" run="echo after-ran"
    }
}
"""


async def test_submit_waits_and_answers_json(harness: Harness, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    repo = tmp_path / "repo"
    make_repo(repo, FLAKY % {"flag": flag})
    failed = await ciadm(harness, "submit", str(repo), "--commit", "HEAD", "--wait")
    assert failed.returncode == 1, failed.stderr
    assert "submitted: run" in failed.stdout
    # Not a terminal: one plain line per change, the final states last.
    assert "flaky: failure" in failed.stdout and "after: skipped" in failed.stdout
    run_id = failed.stdout.split("submitted: run ", 1)[1].split()[0]

    shown = json.loads((await ciadm(harness, "--json", "show", run_id[:8])).stdout)
    assert shown["state"] == "failure" and shown["repo"] == "local/repo"
    assert shown["event"] == "manual" and shown["ref"] == "refs/heads/main"
    assert {j["key"]: j["state"] for j in shown["jobs"]} == {"flaky": "failure",
                                                             "after": "skipped"}

    flag.write_text("")
    again = await ciadm(harness, "submit", str(repo), "--commit", "HEAD", "--wait", "--json")
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert document["state"] == "success" and document["run_id"] != run_id


async def test_submit_errors_are_clear(harness: Harness, tmp_path: Path) -> None:
    missing = await ciadm(harness, "submit", str(tmp_path / "nowhere"), "--commit", "abc")
    assert missing.returncode == 1 and "neither a directory nor a clone URL" in missing.stderr
    url = await ciadm(harness, "submit", "https://forge.example/acme/app.git", "--commit", "a" * 40)
    assert url.returncode == 1 and "--workflow-file" in url.stderr
    repo = tmp_path / "repo"
    make_repo(repo, FLAKY % {"flag": "/nonexistent"})
    unknown = await ciadm(harness, "submit", str(repo), "--commit", "f" * 40)
    assert unknown.returncode == 1 and "no commit" in unknown.stderr


async def test_rerun_failed_keeps_history_and_logs_follow_the_run(harness: Harness,
                                                                  tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    first = await harness.run(FLAKY % {"flag": flag})
    assert first.state == "failure"
    refused = await ciadm(harness, "rerun", str(first.jobs[0].job_id), "--failed")
    assert refused.returncode == 1 and "applies to a run" in refused.stderr

    flag.write_text("")
    rerun = await ciadm(harness, "rerun", str(first.run_id), "--failed", "--wait")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    shown = json.loads((await ciadm(harness, "show", str(first.run_id), "--json")).stdout)
    jobs = {j["key"]: j for j in shown["jobs"]}
    assert shown["state"] == "success"
    assert jobs["flaky"]["attempt"] == 2 and jobs["after"]["state"] == "success"
    assert [(a["attempt"], a["state"]) for a in jobs["flaky"]["earlier_attempts"]] == [
        (1, "failure")]
    assert [a["state"] for a in jobs["after"]["earlier_attempts"]] == ["skipped"]

    logs = await ciadm(harness, "logs", str(first.run_id), "--follow")
    assert logs.returncode == 0, logs.stderr
    assert "[flaky] checking" in logs.stdout.splitlines()
    assert "[after] after-ran" in logs.stdout.splitlines()
    lines = [json.loads(line) for line in
             (await ciadm(harness, "--json", "logs", str(first.run_id))).stdout.splitlines()]
    assert {"job": "after", "line": "after-ran"}.items() <= next(
        line for line in lines if line["line"] == "after-ran").items()

    # One job again: that job and what needs it.
    one = await ciadm(harness, "rerun", str(first.jobs[0].job_id))
    assert one.returncode == 0, one.stderr
    final = await asyncio.wait_for(harness.api.wait(first.run_id), 60)
    assert final.state == "success" and [j.attempt for j in final.jobs] == [3, 2]


async def test_a_run_that_has_not_ended_is_not_re_run(harness: Harness) -> None:
    waiting = await harness.submit(FLAKY % {"flag": "/"}, trusted=False, needs_approval=True)
    busy = await ciadm(harness, "rerun", str(waiting))
    assert busy.returncode == 1 and "has not ended" in busy.stderr
    assert "ciadm cancel" in busy.stderr


async def test_drain_stops_taking_jobs_and_queue_flags_the_label(orchestrator_factory,
                                                                 tmp_path: Path) -> None:
    harness: Harness = await orchestrator_factory(host_heartbeat_interval=0.2, host_stale_after=5)
    flag = tmp_path / "flag"
    flag.write_text("")
    host = harness.orchestrator.config.host_name
    drained = await ciadm(harness, "drain", host)
    assert drained.returncode == 0, drained.stderr
    assert "takes no new jobs" in drained.stdout and "DRAINED" in drained.stdout
    await asyncio.sleep(1.0)  # a few heartbeats: the host read its flag back
    run_id = await harness.submit(FLAKY % {"flag": flag})
    await asyncio.sleep(1.5)
    summary = await harness.api.summary(run_id)
    assert [j.state.value for j in summary.jobs] == ["queued", "queued"]

    queue = json.loads((await ciadm(harness, "queue", "--json")).stdout)
    assert [(q["label"], q["depth"], q["hosts"]) for q in queue] == [("local", 1, [])]
    assert queue[0]["oldest_wait_s"] >= 1.0
    table = await ciadm(harness, "queue")
    assert "NO HOST SERVES THIS LABEL" in table.stdout
    hosts = json.loads((await ciadm(harness, "hosts", "--json")).stdout)
    assert hosts[0]["drained"] is True

    undrained = await ciadm(harness, "undrain", host)
    assert undrained.returncode == 0, undrained.stderr
    final = await asyncio.wait_for(harness.api.wait(run_id), 60)
    assert final.state == "success"
    served = json.loads((await ciadm(harness, "--json", "queue")).stdout)
    assert [(q["label"], q["depth"], q["hosts"]) for q in served] == [("local", 0, [host])]

    unknown = await ciadm(harness, "drain", "no-such-host")
    assert unknown.returncode == 1 and "no host named 'no-such-host'" in unknown.stderr


HELLO = 'workflow name="hello" { job id="build" runs_on="local" { step name="s" run="sleep 1" } }'


async def test_submit_to_a_multi_host_orchestrator_is_idempotent(
        orchestrator_factory, amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    harness: Harness = await orchestrator_factory(amqp_url=amqp_url, broker_prefix=broker_prefix)
    make_repo(tmp_path / "repo", HELLO)
    args = ("submit", str(tmp_path / "repo"), "--commit", "HEAD", "--request-id", "manual-1")
    done = await ciadm(harness, "--json", *args, "--wait")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["state"] == "success" and run["event"] == "manual"
    again = await ciadm(harness, "--json", *args)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["run_id"] == run["run_id"]


def _read_terminal(cmd: list[str]) -> tuple[int, bytes]:
    """Run `cmd` with a pseudo-terminal as its stdout; its exit status and all it wrote."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=terminal, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    os.close(terminal)
    written = b""
    while True:
        try:
            piece = os.read(controller, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not piece:
            break
        written += piece
    os.close(controller)
    return proc.wait(), written


async def test_wait_redraws_in_place_on_a_terminal(harness: Harness, tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", HELLO)
    status, written = await asyncio.to_thread(_read_terminal, [
        sys.executable, "-m", "ciadm.main", "--orchestrator", harness.orchestrator.admin_url,
        "--token", ADMIN_TOKEN, "submit", str(tmp_path / "repo"), "--commit", "HEAD", "--wait"])
    text = written.decode()
    assert status == 0, text
    assert "\x1b[2F\x1b[J" in text  # back over the run's line and its one job, then redrawn
    assert re.search(r"build\s+success", text) and "ended success" in text
