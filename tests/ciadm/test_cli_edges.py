"""`ciadm`'s edges, as a subprocess against a real orchestrator: closed pipes, bad arguments,
cancels of ended runs, addresses with a scheme, full ids with page links, step numbers."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from tests.orchestrator.conftest import ADMIN_TOKEN, Harness

TWO_STEPS = """
workflow name="edges" {
    job id="build" runs_on="local" {
        step name="first" run="echo one"
        step name="second" run="echo two"
    }
}
"""


async def ciadm(address: str, *args: str, stdout: int = subprocess.PIPE
                ) -> subprocess.CompletedProcess[str]:
    """The real `ciadm` in a subprocess, talking to `address`."""
    cmd = [sys.executable, "-m", "ciadm.main", "--orchestrator", address, "--token", ADMIN_TOKEN, *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=stdout, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode or 0,
                                       (out or b"").decode(), err.decode())


async def test_show_into_a_closed_pipe_ends_quietly(harness: Harness) -> None:
    summary = await harness.run(TWO_STEPS)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before ciadm writes a byte, as `| head -0` would be
    try:
        shown = await ciadm(harness.orchestrator.admin_url, "show", str(summary.run_id),
                            stdout=writer)
    finally:
        os.close(writer)
    assert shown.returncode in (0, 141)
    assert shown.stderr == ""  # no traceback, no "Exception ignored"


def test_a_negative_limit_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "ciadm.main", "runs", "--limit", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--limit" in done.stderr and "from 1 to" in done.stderr
    assert "Traceback" not in done.stderr


async def test_an_unknown_state_names_the_valid_ones(harness: Harness) -> None:
    await harness.run(TWO_STEPS)
    bogus = await ciadm(harness.orchestrator.admin_url, "runs", "--state", "bogus")
    assert bogus.returncode == 1
    assert "no run state 'bogus'" in bogus.stderr
    assert "queued, running, success, failure" in bogus.stderr
    good = await ciadm(harness.orchestrator.admin_url, "runs", "--state", "success")
    assert good.returncode == 0 and "success" in good.stdout


async def test_cancel_of_an_ended_run_says_so(harness: Harness) -> None:
    summary = await harness.run(TWO_STEPS)
    done = await ciadm(harness.orchestrator.admin_url, "cancel", str(summary.run_id))
    assert done.returncode == 1
    assert "already ended (success)" in done.stderr and "cancel requested" not in done.stdout
    assert (await harness.api.summary(summary.run_id)).state == "success"


async def test_an_http_address_names_the_same_port(harness: Harness) -> None:
    await harness.run(TWO_STEPS)
    listed = await ciadm(f"http://{harness.orchestrator.admin_url}/", "runs")
    assert listed.returncode == 0, listed.stderr
    assert "1/1 jobs" in listed.stdout
    tls = await ciadm(f"https://{harness.orchestrator.admin_url}", "runs")
    assert tls.returncode == 2 and "plain gRPC" in tls.stderr


async def test_show_prints_full_ids_page_links_and_steps_from_one(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    summary = await harness.run(TWO_STEPS)
    job = summary.jobs[0]
    shown = await ciadm(harness.orchestrator.admin_url, "show", str(summary.run_id)[:8])
    assert shown.returncode == 0, shown.stderr
    base = harness.orchestrator.web.url
    assert f"{base}/runs/{summary.run_id}" in shown.stdout
    assert str(job.job_id) in shown.stdout
    page = f"{base}/jobs/{job.job_id}"
    assert page in shown.stdout
    lines = [line.strip() for line in shown.stdout.splitlines()]
    assert any(line.startswith("1. first") for line in lines)
    assert any(line.startswith("2. second") for line in lines)
    assert not any(line.startswith("0.") for line in lines)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:  # a real page
        assert (await http.get(page)).status_code == 200


@pytest.mark.parametrize("address", ["127.0.0.1", "ftp://127.0.0.1:1", "127.0.0.1:port"])
def test_a_malformed_address_is_a_usage_error(address: str) -> None:
    done = subprocess.run([sys.executable, "-m", "ciadm.main", "--orchestrator", address, "runs"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr
