"""Who reaches administration and logs, met the way a job or an attacker meets them: real
orchestrators (real gRPC servers, real HTTP server, real Postgres, runner and local backend),
the real `ciadm` and `solstice-orchestrator` entry points.

- Admin is not served on the Runner port (the only port a job machine is given);
- every Admin call needs the admin token, unary and streaming alike;
- no token configured: the orchestrator does not start; the opt-out only on loopback;
- the web pages refuse without the token unless `web_access = "public"`; `/healthz` is open.
"""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import httpx
import pytest

from common.errors import ConfigError
from common.messages import JobState
from orchestrator.backends.qemu import GuestForward, refuse_admin_forwards
from orchestrator.config import OrchestratorConfig
from orchestrator.main import main as orchestrator_main
from orchestrator.main import make_backend
from orchestrator.webauth import COOKIE
from protos import admin_pb2, admin_pb2_grpc
from tests.orchestrator.conftest import ADMIN_TOKEN, Factory, Harness

GATED = """
workflow name="gated" {
    job id="deploy" runs_on="local" { step name="d" run="echo deployed"; }
}
"""
SECRET_LOG = 'workflow { job id="j" runs_on="local" { step name="s" run="echo private-log-line"; }; }'


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def admin_call(address: str, method: str, request: object,
                     metadata: tuple[tuple[str, str], ...] = ()) -> object:
    """One Admin RPC at `address`; a streaming one is read to its end."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = getattr(admin_pb2_grpc.AdminStub(channel), method)(request, metadata=metadata)
        if method == "TailLogs":
            return [chunk async for chunk in call]
        return await call


async def refused(address: str, method: str, request: object,
                  metadata: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin_call(address, method, request, metadata)
    return raised.value


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SOLSTICE_"):
            monkeypatch.delenv(key)


# -- the Runner port -------------------------------------------------------------------------


async def test_admin_is_not_served_on_the_runner_port(harness: Harness) -> None:
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    runner_port = harness.orchestrator.grpc_url
    assert harness.orchestrator.admin_url != runner_port
    for method, request in [("ListRuns", admin_pb2.ListRunsRequest()),
                            ("ApproveRun", admin_pb2.RunRef(run_id=str(run_id))),
                            ("CancelRun", admin_pb2.RunRef(run_id=str(run_id))),
                            ("TailLogs", admin_pb2.TailLogsRequest(job_id=str(run_id)))]:
        # Even with the right token: the service is simply not there.
        error = await refused(runner_port, method, request, bearer(ADMIN_TOKEN))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED, method
    summary = await harness.api.summary(run_id)
    assert [j.state for j in summary.jobs] == [JobState.AWAITING_APPROVAL]


# -- the Admin port: the token ---------------------------------------------------------------


@pytest.mark.parametrize("metadata", [
    (), bearer("wrong-token-of-the-right-length"), (("authorization", ADMIN_TOKEN),),
    bearer(ADMIN_TOKEN + "x"), bearer(ADMIN_TOKEN[:-1])],
    ids=["missing", "wrong", "no-bearer-prefix", "longer", "shorter"])
async def test_admin_calls_without_the_right_token_are_refused(
        harness: Harness, metadata: tuple[tuple[str, str], ...]) -> None:
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    job_id = (await harness.api.summary(run_id)).jobs[0].job_id
    admin = harness.orchestrator.admin_url
    for method, request in [("ListRuns", admin_pb2.ListRunsRequest()),
                            ("GetRun", admin_pb2.RunRef(run_id=str(run_id))),
                            ("ApproveRun", admin_pb2.RunRef(run_id=str(run_id))),
                            ("CancelRun", admin_pb2.RunRef(run_id=str(run_id))),
                            ("ListHosts", admin_pb2.ListHostsRequest()),
                            ("TailLogs", admin_pb2.TailLogsRequest(job_id=str(job_id)))]:
        error = await refused(admin, method, request, metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert "admin token" in error.details() and "--token-file" in error.details()
    summary = await harness.api.summary(run_id)  # neither approved nor cancelled
    assert [j.state for j in summary.jobs] == [JobState.AWAITING_APPROVAL]


async def test_the_right_token_administers(harness: Harness) -> None:
    run_id = await harness.submit(GATED, trusted=False, needs_approval=True)
    admin = harness.orchestrator.admin_url
    approved = await admin_call(admin, "ApproveRun", admin_pb2.RunRef(run_id=str(run_id)),
                                bearer(ADMIN_TOKEN))
    assert approved.run_id == str(run_id)
    final = await asyncio.wait_for(harness.api.wait(run_id), 60)
    assert final.state == "success"
    chunks = await admin_call(admin, "TailLogs",
                              admin_pb2.TailLogsRequest(job_id=str(final.jobs[0].job_id)),
                              bearer(ADMIN_TOKEN))
    assert b"deployed" in b"".join(c.data for c in chunks)


# -- refusing to start -----------------------------------------------------------------------


def test_no_token_configured_refuses_to_start(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    clean_environment(monkeypatch)
    assert orchestrator_main(["--standalone", "--allow-local-backend"]) == 2
    err = capsys.readouterr().err
    assert "no admin token is configured" in err
    assert "admin_token_file" in err and "openssl rand" in err  # how to set one


async def test_an_embedded_orchestrator_without_a_token_refuses_too(
        orchestrator_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="no admin token"):
        await orchestrator_factory(admin_token=None)


@pytest.mark.parametrize("listen", ["0.0.0.0:50552", "[::]:50552", "10.77.0.1:50552",
                                    ":50552", "ci.example.org:50552"])
def test_the_opt_out_is_refused_off_loopback(listen: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    clean_environment(monkeypatch)
    assert orchestrator_main(["--standalone", "--insecure-admin-no-auth",
                              "--admin-listen", listen]) == 2
    err = capsys.readouterr().err
    assert "insecure_admin_no_auth is refused" in err and "127.0.0.1" in err


def test_the_opt_out_with_a_token_and_short_tokens_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    clean_environment(monkeypatch)
    monkeypatch.setenv("SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN", "long-enough-admin-token")
    assert orchestrator_main(["--standalone", "--insecure-admin-no-auth"]) == 2
    assert "together with an admin token" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_text("hunter2\n")
    monkeypatch.delenv("SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN")
    assert orchestrator_main(["--standalone", "--admin-token-file", str(short)]) == 2
    assert "too short" in capsys.readouterr().err


@pytest.mark.parametrize("admin_listen", ["127.0.0.1:50061", "0.0.0.0:50061"])
def test_admin_may_not_share_the_runner_port(admin_listen: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    clean_environment(monkeypatch)
    monkeypatch.setenv("SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN", "long-enough-admin-token")
    assert orchestrator_main(["--standalone", "--grpc-listen", "127.0.0.1:50061",
                              "--admin-listen", admin_listen]) == 2
    assert "is the Runner service's address" in capsys.readouterr().err


async def test_no_second_server_can_share_a_taken_port(orchestrator_factory: Factory) -> None:
    """Without SO_REUSEPORT a second bind fails, so no Admin server (this process's or
    another's) can end up answering part of the Runner port's connections."""
    first = await orchestrator_factory()
    for taken in (first.orchestrator.grpc_url, first.orchestrator.admin_url):
        with pytest.raises(ConfigError, match="cannot listen"):
            await orchestrator_factory(admin_listen=taken)


async def test_the_opt_out_on_loopback_serves_without_a_token_and_warns(
        orchestrator_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.adminauth"):
        harness = await orchestrator_factory(admin_token=None, insecure_admin_no_auth=True)
    assert any("ADMIN AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
    listed = await admin_call(harness.orchestrator.admin_url, "ListRuns",
                              admin_pb2.ListRunsRequest())
    assert list(listed.runs) == []
    # Still nothing on the Runner port.
    error = await refused(harness.orchestrator.grpc_url, "ListRuns", admin_pb2.ListRunsRequest())
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


# -- qemu: no forward to the Admin listener --------------------------------------------------


def test_a_qemu_forward_to_the_admin_port_is_refused(tmp_path: Path) -> None:
    to_admin = GuestForward(guest_address="10.0.2.50", guest_port=80, host="127.0.0.1",
                            port=50552)
    with pytest.raises(ConfigError, match="Admin service"):
        refuse_admin_forwards([to_admin], "127.0.0.1:50552")
    to_forge = GuestForward(guest_address="10.0.2.50", guest_port=3000, host="127.0.0.1",
                            port=3000)
    refuse_admin_forwards([to_forge], "127.0.0.1:50552")
    config_file = tmp_path / "solstice.toml"
    config_file.write_text(
        '[orchestrator]\nbackend = "qemu"\n'
        f'[orchestrator.qemu]\nstate_dir = "{tmp_path}/vms"\n'
        '[[orchestrator.qemu.forwards]]\nguest_address = "10.0.2.50"\nguest_port = 80\n'
        'host = "localhost"\nport = 50552\n')
    with pytest.raises(ConfigError, match="Admin service"):
        make_backend(OrchestratorConfig(state_dir=tmp_path, backend="qemu"), str(config_file))


# -- ciadm -----------------------------------------------------------------------------------


def ciadm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    return subprocess.run([sys.executable, "-m", "ciadm.main", *args], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


async def test_ciadm_token_sources_and_hints(harness: Harness, tmp_path: Path) -> None:
    admin = harness.orchestrator.admin_url
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return ciadm("--orchestrator", args[0], *args[1:], env=env)

    without = await asyncio.to_thread(run, admin, "runs")
    assert without.returncode == 1 and "needs the admin token" in without.stderr
    assert "--token-file" in without.stderr and "SOLSTICE_ADMIN_TOKEN" in without.stderr
    wrong = await asyncio.to_thread(run, admin, "--token", "wrong-token-of-the-right-length",
                                    "runs")
    assert wrong.returncode == 1 and "refused the admin token" in wrong.stderr
    for args, env in [(("--token-file", str(token_file)), None),
                      ((), {"SOLSTICE_ADMIN_TOKEN_FILE": str(token_file)}),
                      ((), {"SOLSTICE_ADMIN_TOKEN": ADMIN_TOKEN})]:
        ok = await asyncio.to_thread(run, admin, *args, "hosts", env=env)
        assert ok.returncode == 0 and harness.orchestrator.config.host_name in ok.stdout, ok.stderr
    runner = await asyncio.to_thread(run, harness.orchestrator.grpc_url, "--token", ADMIN_TOKEN,
                                     "runs")
    assert runner.returncode == 1 and "does not serve the Admin service" in runner.stderr
    assert "admin_listen" in runner.stderr
    missing = await asyncio.to_thread(run, admin, "--token-file", str(tmp_path / "nope"), "runs")
    assert missing.returncode == 1 and "cannot read the admin token file" in missing.stderr


# -- web pages -------------------------------------------------------------------------------


async def test_web_pages_need_the_token_by_default(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    summary = await harness.run(SECRET_LOG)
    job_id = summary.jobs[0].job_id
    pages = [f"/jobs/{job_id}", f"/jobs/{job_id}/log.txt", f"/runs/{summary.run_id}",
             f"/jobs/{uuid.uuid4()}"]
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        for path in pages:
            for headers in ({}, {"Authorization": "Bearer wrong-token-of-the-right-length"},
                            {"Authorization": ADMIN_TOKEN}, {"Cookie": f"{COOKIE}={ADMIN_TOKEN}"}):
                page = await http.get(path, headers=headers)
                assert page.status_code == 401, (path, headers)
                assert "private-log-line" not in page.text and "?token=" in page.text
        assert (await http.get(pages[0], params={"token": "wrong"})).status_code == 401

        page = await http.get(pages[0], headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert page.status_code == 200 and "private-log-line" in page.text

        # Once with ?token=: a cookie, and a redirect to the page without the token in its URL.
        login = await http.get(pages[0], params={"token": ADMIN_TOKEN, "x": "1"})
        assert login.status_code == 303 and login.headers["location"] == f"{job_id}?x=1"
        cookie = login.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        assert ADMIN_TOKEN not in cookie  # a derived value: no use against the Admin service
        error = await refused(harness.orchestrator.admin_url, "ListRuns",
                              admin_pb2.ListRunsRequest(), bearer(login.cookies[COOKIE]))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        raw = await http.get(pages[1])  # the client keeps the cookie, as a browser does
        assert raw.status_code == 200 and b"private-log-line" in raw.content


async def test_public_web_pages_are_an_explicit_choice(
        orchestrator_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.adminauth"):
        harness = await orchestrator_factory(web_listen="127.0.0.1:0", web_access="public")
    assert any("web pages are PUBLIC" in r.getMessage() for r in caplog.records)
    summary = await harness.run(SECRET_LOG)
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url) as http:
        page = await http.get(f"/jobs/{summary.jobs[0].job_id}")
    assert page.status_code == 200 and "private-log-line" in page.text


async def test_token_web_pages_need_a_token_even_with_the_opt_out(
        orchestrator_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="web_access"):
        await orchestrator_factory(web_listen="127.0.0.1:0", admin_token=None,
                                   insecure_admin_no_auth=True)
