"""Held machines: a failed job's machine kept up, reached with `ciadm exec` / `shell` over its
runner's channel (real Postgres, gRPC servers, runner process, local backend)."""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import uuid

import httpx

from common.broker import Delivery
from common.messages import JobEvent, JobState, decode
from orchestrator.api import RunSummary
from tests.ciadm.test_admin import ciadm
from tests.orchestrator.conftest import ADMIN_TOKEN, Harness

FAILING = """
workflow name="debug" hold_on_failure="{ttl}" {{
    job id="build" runs_on="local" {{
        step name="break" run="echo the-evidence > evidence.txt; exit 1"
    }}
}}
"""


async def held_failure(harness: Harness, ttl: str = "5m") -> RunSummary:
    """A run whose only job failed and whose machine is held."""
    summary = await asyncio.wait_for(harness.run(FAILING.format(ttl=ttl)), 60)
    assert summary.state == "failure"
    assert summary.jobs[0].state == JobState.FAILURE
    return summary


def machine_dirs(harness: Harness) -> list[str]:
    return sorted(p.name for p in harness.machines.iterdir()) if harness.machines.exists() else []


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def held_until(harness: Harness, job_id: uuid.UUID):
    return await harness.orchestrator.db.pool.fetchval(
        "SELECT held_until FROM jobs WHERE id = $1", job_id)


async def test_failed_job_is_held_exec_runs_in_its_workspace_then_release(harness: Harness):
    summary = await held_failure(harness)
    job_id = summary.jobs[0].job_id
    assert await held_until(harness, job_id) is not None
    assert len(machine_dirs(harness)) == 1  # the machine stays up after the result

    uname = await ciadm(harness, "exec", str(job_id), "--", "uname", "-a")
    assert uname.returncode == 0, uname.stderr
    assert "Linux" in uname.stdout
    evidence = await ciadm(harness, "exec", str(job_id)[:8], "--", "cat", "evidence.txt")
    assert evidence.returncode == 0, evidence.stderr
    assert evidence.stdout == "the-evidence\n"
    status = await ciadm(harness, "exec", str(job_id), "--", "sh", "-c", "exit 7")
    assert status.returncode == 7
    recorded = await ciadm(harness, "exec", "--record", str(job_id), "--", "echo", "kept-line")
    assert recorded.returncode == 0, recorded.stderr
    log = (await ciadm(harness, "logs", str(job_id))).stdout
    assert "debug session (exec) by token:bootstrap" in log
    assert "kept-line" in log and "end of debug session: exit 0" in log
    assert "the-evidence" not in log and "Linux" not in log  # unrecorded sessions stay out

    shown = await ciadm(harness, "show", str(summary.run_id))
    assert "machine held until" in shown.stdout and f"ciadm shell {job_id}" in shown.stdout
    hosts = await ciadm(harness, "hosts")
    assert "held 1" in hosts.stdout

    released = await ciadm(harness, "release", str(job_id))
    assert released.returncode == 0, released.stderr
    await wait_for(lambda: _gone(harness))
    assert await held_until(harness, job_id) is None
    again = await ciadm(harness, "exec", str(job_id), "--", "true")
    assert again.returncode == 1 and "not held" in again.stderr

    entries = await harness.orchestrator.db.pool.fetch(
        "SELECT actor, action, outcome, detail FROM audit_log WHERE target = $1 ORDER BY id",
        str(job_id))
    actions = [(e["actor"], e["action"], e["outcome"]) for e in entries]
    # Opened and closed, four times; the one after the release refused.
    assert actions.count(("token:bootstrap", "exec", "ok")) == 8
    assert ("token:bootstrap", "release", "ok") in actions
    assert actions[-1][:2] == ("token:bootstrap", "exec") and "not held" in actions[-1][2]
    assert any("closed after" in e["detail"] and "exit 7" in e["detail"] for e in entries)


async def _gone(harness: Harness) -> bool:
    return not machine_dirs(harness)


class Terminal:
    """`ciadm shell` on a pseudo-terminal, as a person's terminal runs it."""

    def __init__(self, harness: Harness, job_id: uuid.UUID) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ciadm.main", "--orchestrator",
             harness.orchestrator.admin_url, "--token", ADMIN_TOKEN, "shell", str(job_id)],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.screen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.process.send_signal(signal.SIGWINCH)

    async def expect(self, *texts: str, timeout: float = 20.0) -> None:
        """Wait until one of `texts` is on the screen."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not any(text.encode() in self.screen for text in texts):
            assert asyncio.get_running_loop().time() < deadline, \
                f"{texts!r} never appeared; screen: {self.screen[-500:]!r}"
            try:
                self.screen += os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                await asyncio.sleep(0.05)

    async def exit_code(self, timeout: float = 20.0) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process.poll() is None:
            assert asyncio.get_running_loop().time() < deadline, "ciadm shell did not exit"
            with contextlib.suppress(BlockingIOError, OSError):
                self.screen += os.read(self.master, 65536)
            await asyncio.sleep(0.05)
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


async def test_shell_through_a_terminal_resize_ctrl_c_and_exit_status(harness: Harness):
    summary = await held_failure(harness)
    job_id = summary.jobs[0].job_id
    terminal = Terminal(harness, job_id)
    try:
        await terminal.expect("$ ", "# ", timeout=40)  # the remote shell's prompt
        terminal.type("stty size; cat evidence.txt\r")
        await terminal.expect("30 90")
        await terminal.expect("the-evidence")
        terminal.resize(40, 100)
        await asyncio.sleep(0.5)
        terminal.type("stty size\r")
        await terminal.expect("40 100")
        terminal.type("sleep 100\r")
        await asyncio.sleep(1.0)
        terminal.type("\x03")  # Ctrl-C: the remote terminal interrupts the sleep
        terminal.type("echo after-$?\r")
        await terminal.expect("after-130")
        terminal.type("exit 3\r")
        assert await terminal.exit_code() == 3
    finally:
        terminal.close()
    entries = await harness.orchestrator.db.pool.fetch(
        "SELECT detail FROM audit_log WHERE action = 'shell' AND target = $1", str(job_id))
    assert [e["detail"].split(" ")[0] for e in entries] == ["opened", "closed"]
    assert "exit 3" in entries[1]["detail"]


async def test_ttl_expiry_destroys_the_machine_and_frees_the_slot(orchestrator_factory):
    harness = await orchestrator_factory(capacity={"local": 1})
    summary = await held_failure(harness, ttl="3s")
    assert machine_dirs(harness)
    await wait_for(lambda: _gone(harness), timeout=15)
    assert await held_until(harness, summary.jobs[0].job_id) is None
    # The one slot is free again: the next job runs.
    after = await asyncio.wait_for(harness.run(
        'workflow { job id="next" runs_on="local" { step name="ok" run="true"; }; }'), 60)
    assert after.state == "success"


async def test_session_open_at_the_ttl_is_told_and_ended(orchestrator_factory):
    harness = await orchestrator_factory()
    summary = await held_failure(harness, ttl="10s")
    ended = await ciadm(harness, "exec", str(summary.jobs[0].job_id), "--", "sleep", "60")
    assert ended.returncode == 255
    assert "destroyed in" in ended.stderr  # the warning before the TTL
    assert "the hold ended (its time ran out)" in ended.stderr


async def test_no_more_than_max_held_machines(orchestrator_factory):
    harness = await orchestrator_factory(max_held=1)
    first = await held_failure(harness)
    second = await asyncio.wait_for(harness.run(FAILING.format(ttl="5m")), 60)
    assert second.state == "failure"
    assert await held_until(harness, first.jobs[0].job_id) is not None
    assert await held_until(harness, second.jobs[0].job_id) is None
    assert len(machine_dirs(harness)) == 1
    refused = await ciadm(harness, "exec", str(second.jobs[0].job_id), "--", "true")
    assert refused.returncode == 1 and "not held" in refused.stderr


async def test_shell_without_the_admin_token_is_refused(harness: Harness):
    summary = await held_failure(harness)
    job_id = str(summary.jobs[0].job_id)
    for token in (None, "wrong-token-0123456789"):
        refused = await ciadm(harness, "exec", job_id, "--", "true", token=token)
        assert refused.returncode == 1 and "admin token" in refused.stderr
    opened = await harness.orchestrator.db.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE target = $1 AND action = 'exec'", job_id)
    assert opened == 0


async def test_ciadm_hold_on_a_running_job(harness: Harness, tmp_path):
    gate = tmp_path / "go"
    run_id = await harness.submit(f"""
workflow name="held-later" {{
    job id="build" runs_on="local" {{
        step name="wait" run="while [ ! -e {gate} ]; do sleep 0.1; done; exit 2"
    }}
}}
""")
    async def running() -> bool:
        summary = await harness.api.summary(run_id)
        return summary.jobs[0].state == JobState.RUNNING
    await wait_for(running)
    job_id = (await harness.api.summary(run_id)).jobs[0].job_id
    held = await ciadm(harness, "hold", str(job_id), "--ttl", "2m")
    assert held.returncode == 0, held.stderr
    assert "held for 2m" in held.stdout
    gate.touch()
    summary = await asyncio.wait_for(harness.api.wait(run_id), 60)
    assert summary.state == "failure"
    assert await held_until(harness, job_id) is not None
    shown = await ciadm(harness, "exec", str(job_id), "--", "echo", "inside")
    assert shown.stdout == "inside\n"
    done = await ciadm(harness, "hold", str(job_id), "--ttl", "1m")
    assert done.returncode == 1 and "not queued or running" in done.stderr


async def test_job_page_says_held_and_the_forge_already_saw_failure(orchestrator_factory):
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    events: list[JobEvent] = []

    async def collect(delivery: Delivery) -> None:
        events.append(decode(delivery.body, JobEvent))
        await delivery.ack()

    await harness.orchestrator.broker.consume_events("hold-test", collect)
    summary = await held_failure(harness)
    job_id = summary.jobs[0].job_id
    await wait_for(lambda: _reported(events))  # while the machine is held
    assert machine_dirs(harness)
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        page = await http.get(f"/jobs/{job_id}")
        assert "held until" in page.text and f"ciadm shell {job_id}" in page.text
        harness.orchestrator.holds.release_all("test")
        await wait_for(lambda: _gone(harness))
        page = await http.get(f"/jobs/{job_id}")
        assert "held until" not in page.text


async def _reported(events: list[JobEvent]) -> bool:
    return any(e.state == JobState.FAILURE for e in events)


async def test_rerun_with_hold_holds_the_new_attempt_and_only_it(harness: Harness):
    plain = FAILING.replace(' hold_on_failure="{ttl}"', "").format()
    first = await asyncio.wait_for(harness.run(plain), 60)
    job_id = first.jobs[0].job_id
    assert first.state == "failure" and await held_until(harness, job_id) is None
    assert not machine_dirs(harness)
    too_long = await ciadm(harness, "rerun", str(job_id), "--hold", "48h")
    assert too_long.returncode == 1 and "at most 86400" in too_long.stderr

    rerun = await ciadm(harness, "rerun", str(job_id), "--hold", "5m", "--wait")
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # the job failed again
    assert "held for 5m" in rerun.stdout
    assert await held_until(harness, job_id) is not None
    evidence = await ciadm(harness, "exec", str(job_id), "--", "cat", "evidence.txt")
    assert evidence.returncode == 0, evidence.stderr
    assert evidence.stdout == "the-evidence\n"
    assert (await ciadm(harness, "release", str(job_id))).returncode == 0
    await wait_for(lambda: _gone(harness))

    # On a run: its re-run jobs are held. A later re-run without --hold is not.
    again = await ciadm(harness, "rerun", str(first.run_id), "--hold", "2m", "--wait")
    assert again.returncode == 1, again.stdout + again.stderr
    assert await held_until(harness, job_id) is not None
    assert (await ciadm(harness, "exec", str(job_id), "--", "true")).returncode == 0
    assert (await ciadm(harness, "release", str(job_id))).returncode == 0
    await wait_for(lambda: _gone(harness))
    last = await ciadm(harness, "rerun", str(first.run_id), "--wait")
    assert last.returncode == 1, last.stdout + last.stderr
    assert await held_until(harness, job_id) is None and not machine_dirs(harness)

    audited = await harness.orchestrator.db.pool.fetch(
        "SELECT outcome, detail FROM audit_log WHERE action = 'rerun' AND target = $1"
        " ORDER BY id", str(first.run_id))
    assert [(a["outcome"], a["detail"]) for a in audited][1:] == [
        ("ok", "build; held 5m if failed"), ("ok", "build; held 2m if failed"), ("ok", "build")]
    assert audited[0]["outcome"].startswith("refused")
