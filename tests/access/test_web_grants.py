"""`web_access = "signed"` met the way a contributor meets it: the link in the commit's status
(the JobEvent's `log_url`, as the integrations publish it) opens that run's pages over real
HTTP against a real orchestrator, and nothing else; an admin token opens everything."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from common.broker import Delivery
from common.errors import ConfigError
from common.messages import JobEvent, JobState, decode
from orchestrator.webauth import COOKIE, GRANT_COOKIE_MAX_AGE, GRANT_COOKIE_PREFIX
from tests.orchestrator.conftest import ADMIN_TOKEN, Factory, Harness

WORKFLOW = 'workflow { job id="j" runs_on="local" { step name="s" run="echo private-{n}"; }; }'
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def final_links(harness: Harness, count: int) -> tuple[list[uuid.UUID], dict[uuid.UUID, str]]:
    """Run `count` runs; their ids and the last log_url published for each."""
    links: dict[uuid.UUID, str] = {}

    async def collect(delivery: Delivery) -> None:
        event = decode(delivery.body, JobEvent)
        if event.state.final:
            links[event.run_id] = event.log_url
        await delivery.ack()

    await harness.orchestrator.broker.consume_events(f"grants-{uuid.uuid4().hex[:6]}", collect)
    runs = []
    for n in range(count):
        summary = await harness.run(WORKFLOW.replace("{n}", str(n)))
        assert summary.state == "success"
        runs.append(summary.run_id)
    for _ in range(200):
        if len(links) == count:
            break
        await asyncio.sleep(0.05)
    return runs, links


def job_of(link: str) -> str:
    return re.search(r"/jobs/([0-9a-f-]{36})", link).group(1)


async def test_a_status_link_opens_its_run_and_nothing_else(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    base = harness.orchestrator.web.url
    (run_a, run_b), links = await final_links(harness, 2)
    link_a = links[run_a]
    assert link_a.startswith(f"{base}/jobs/") and f"?grant={run_a}." in link_a
    grant_a = link_a.split("?grant=")[1]
    job_a, job_b = job_of(link_a), job_of(links[run_b])

    async with httpx.AsyncClient(base_url=base) as browser:
        page = await browser.get(link_a)
        assert page.status_code == 200 and "private-0" in page.text
        assert page.headers["referrer-policy"] == "no-referrer"
        cookie = page.headers["set-cookie"].lower()
        assert f"{GRANT_COOKIE_PREFIX}{run_a.hex}=" in cookie and "httponly" in cookie
        max_age = int(re.search(r"max-age=(\d+)", cookie).group(1))
        assert GRANT_COOKIE_MAX_AGE - 60 < max_age <= GRANT_COOKIE_MAX_AGE
        # The browser keeps the cookie: the run page and the log follow without a grant.
        run_page = await browser.get(f"/runs/{run_a}")
        assert run_page.status_code == 200 and f"href='/jobs/{job_a}'" in run_page.text
        log = await browser.get(f"/jobs/{job_a}/log.txt")
        assert log.status_code == 200 and b"private-0" in log.content

        # The other run: no grant of its own, and A's grant does not open it.
        other = await browser.get(f"/jobs/{job_b}")
        assert other.status_code == 401 and "private-1" not in other.text
        assert "link in a commit's status" in other.text
        for path in (f"/jobs/{job_b}", f"/runs/{run_b}", f"/jobs/{job_b}/log.txt",
                     f"/jobs/{uuid.uuid4()}", f"/runs/{str(run_b)[:8]}", "/", "/runs"):
            refused = await browser.get(path, params={"grant": grant_a})
            assert refused.status_code == 403, path
            assert f"opens the pages of run {run_a} only" in refused.text, path
            assert "private-1" not in refused.text

    forged = [grant_a[:-2] + ("AA" if not grant_a.endswith("AA") else "BB"),
              grant_a.replace(str(run_a), str(run_b)),
              ".".join([str(run_a), str(int(time.time()) + 10**6), grant_a.rsplit(".")[-1]])]
    expired = harness.orchestrator.grants.issue(run_a, now=time.time() - 31 * 24 * 3600)
    async with httpx.AsyncClient(base_url=base) as stranger:
        for bad in forged:
            answer = await stranger.get(f"/runs/{run_a}", params={"grant": bad})
            assert answer.status_code == 403 and "not valid" in answer.text, bad
        old = await stranger.get(f"/runs/{run_a}", params={"grant": expired})
        assert old.status_code == 403 and "this link expired on" in old.text
        cut = await stranger.get(f"/runs/{run_a}", params={"grant": grant_a.split(".")[0]})
        assert cut.status_code == 403 and "malformed" in cut.text
        nothing = await stranger.get(f"/runs/{run_a}")
        assert nothing.status_code == 401 and "?token=" in nothing.text
        # A forged cookie is no better than a forged link.
        stranger.cookies.set(f"{GRANT_COOKIE_PREFIX}{run_b.hex}", grant_a)
        assert (await stranger.get(f"/runs/{run_b}")).status_code == 403

    async with httpx.AsyncClient(base_url=base, headers=AUTH) as admin:
        for path in (f"/jobs/{job_b}", f"/runs/{run_b}", f"/runs/{str(run_b)[:8]}"):
            answer = await admin.get(path, follow_redirects=True)
            assert answer.status_code == 200, path


async def ciadm(harness: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ciadm.main", "--orchestrator", harness.orchestrator.admin_url,
           "--token", ADMIN_TOKEN, *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode or 0, out.decode(), err.decode())


async def test_named_tokens_sign_in_and_revocation_ends_the_session(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    base = harness.orchestrator.web.url
    summary = await harness.run(WORKFLOW.replace("{n}", "x"))
    shown = await ciadm(harness, "show", str(summary.run_id))
    link = re.search(rf"{base}/runs/\S+", shown.stdout).group(0)
    assert f"?grant={summary.run_id}." in link  # an operator can hand the link on
    async with httpx.AsyncClient() as colleague:
        assert (await colleague.get(link)).status_code == 200

    created = await ciadm(harness, "token", "create", "web-reader")
    reader = created.stdout.strip()
    async with httpx.AsyncClient(base_url=base) as browser:
        login = await browser.get(f"/runs/{summary.run_id}", params={"token": reader})
        assert login.status_code == 303 and reader not in login.headers["set-cookie"]
        assert browser.cookies[COOKIE].startswith("web-reader.")
        assert (await browser.get(f"/jobs/{summary.jobs[0].job_id}")).status_code == 200
        assert (await ciadm(harness, "token", "revoke", "web-reader")).returncode == 0
        after = await browser.get(f"/jobs/{summary.jobs[0].job_id}")
        assert after.status_code == 401
        bearer = await browser.get(f"/runs/{summary.run_id}",
                                   headers={"Authorization": f"Bearer {reader}"})
        assert bearer.status_code == 401 and "wrong token" in bearer.text


async def test_token_mode_publishes_plain_links_and_takes_no_grant(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0", web_access="token")
    (run_id,), links = await final_links(harness, 1)
    assert "grant=" not in links[run_id]
    grant = harness.orchestrator.grants
    assert grant is None
    async with httpx.AsyncClient() as stranger:
        answer = await stranger.get(links[run_id], params={"grant": f"{run_id}.1.x"})
    assert answer.status_code == 401 and "admin token" in answer.text


async def test_hosts_sharing_a_key_file_honour_each_others_links(
        orchestrator_factory: Factory, tmp_path: Path) -> None:
    key = tmp_path / "web-grant-key"
    key.write_text("k" * 40 + "\n")
    first = await orchestrator_factory(web_listen="127.0.0.1:0", web_grant_key_file=key)
    (run_id,), links = await final_links(first, 1)
    # Started after the run: its in-process broker would take a share of the events.
    second = await orchestrator_factory(web_listen="127.0.0.1:0", web_grant_key_file=key,
                                        admin_token="another-admin-token-of-this-host")
    other_host = links[run_id].replace(first.orchestrator.web.url, second.orchestrator.web.url)
    async with httpx.AsyncClient() as browser:
        assert (await browser.get(other_host)).status_code == 200
    key.write_text("z" * 40)
    third = await orchestrator_factory(web_listen="127.0.0.1:0", web_grant_key_file=key)
    elsewhere = links[run_id].replace(first.orchestrator.web.url, third.orchestrator.web.url)
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(elsewhere)
    assert answer.status_code == 403 and "signed by another installation" in answer.text


async def test_signing_keys_are_checked_at_start(orchestrator_factory: Factory,
                                                 tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("too-short")
    with pytest.raises(ConfigError, match="web grant key .* is too short"):
        await orchestrator_factory(web_listen="127.0.0.1:0", web_grant_key_file=short)
    with pytest.raises(ConfigError, match="web_access = \"signed\" signs its links"):
        await orchestrator_factory(web_listen="127.0.0.1:0", admin_token=None,
                                   insecure_admin_no_auth=True)
    key = tmp_path / "key"
    key.write_text("k" * 40)
    # The development opt-out with a key file: grants work, no admin token exists.
    harness = await orchestrator_factory(web_listen="127.0.0.1:0", admin_token=None,
                                         insecure_admin_no_auth=True, web_grant_key_file=key)
    (run_id,), links = await final_links(harness, 1)
    async with httpx.AsyncClient() as browser:
        assert (await browser.get(links[run_id])).status_code == 200


async def test_the_run_page_says_who_approved_and_who_cancelled(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    approved = await harness.submit(WORKFLOW.replace("{n}", "a"), trusted=False,
                                    needs_approval=True)
    cancelled = await harness.submit(WORKFLOW.replace("{n}", "c"), trusted=False,
                                     needs_approval=True)
    assert await harness.api.approve_run(approved, "github:octocat")
    assert await harness.api.cancel_run(cancelled, "not this one", actor="forgejo:maintainer")
    await asyncio.wait_for(harness.api.wait(approved), 60)
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as admin:
        page = (await admin.get(f"/runs/{approved}")).text
        assert re.search(r"<dt>approval</dt><dd>approved by github:octocat at <time datetime='[^']+'>"
                         r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>", page)
        assert "<dt>cancelled</dt>" not in page
        page = (await admin.get(f"/runs/{cancelled}")).text
        assert "<dt>cancelled</dt><dd>by forgejo:maintainer at <time" in page
        assert "approved by" not in page


async def test_the_run_page_offers_a_rerun_to_admin_token_holders_only(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    summary = await harness.run('''
workflow { job id="flaky" runs_on="local" { step name="once" run="exit 3"; }; }''')
    assert summary.state == "failure"
    run_id = summary.run_id
    grant = harness.orchestrator.grants.issue(run_id)
    base = harness.orchestrator.web.url
    async with httpx.AsyncClient(base_url=base) as visitor:
        page = await visitor.get(f"/runs/{run_id}", params={"grant": grant})
        assert page.status_code == 200 and "re-run" not in page.text  # a grant reads only
        refused = await visitor.post(f"/runs/{run_id}/rerun", data={"failed": "1"})
        assert refused.status_code == 403 and "admin token" in refused.text
    async with httpx.AsyncClient(base_url=base, headers=AUTH) as admin:
        page = await admin.get(f"/runs/{run_id}")
        assert f"action='/runs/{run_id}/rerun'" in page.text and "re-run failed jobs" in page.text
        foreign = await admin.post(f"/runs/{run_id}/rerun", data={"failed": "1"},
                                   headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        again = await admin.post(f"/runs/{run_id}/rerun", data={"failed": "1"})
        assert again.status_code == 303 and again.headers["location"] == f"/runs/{run_id}"
        rerun = await harness.api.wait(run_id)
        [job] = rerun.jobs
        assert job.attempt == 2 and job.state == JobState.FAILURE
    entries = await harness.orchestrator.db.pool.fetch(
        "SELECT actor, action, target FROM audit_log WHERE action = 'rerun'")
    assert ("token:bootstrap", "rerun", str(run_id)) in [tuple(e) for e in entries]
