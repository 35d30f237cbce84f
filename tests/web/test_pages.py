"""Web log pages served by a real orchestrator (real Postgres, runner, local backend, HTTP)."""
from __future__ import annotations

import asyncio
import re
import uuid

import httpx

from common.broker import Delivery
from common.messages import EventKind, JobEvent, JobState, Repo, decode
from orchestrator.web.data import forge_web_url, list_runs
from tests.orchestrator.conftest import ADMIN_TOKEN

# The pages sit behind the admin token by default (tests/security covers the refusals).
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

WORKFLOW = """
workflow name="pages" {
    job id="build" runs_on="local" {
        step name="greet" run="echo '<b>hello</b> from the job'"
        step name="boom" run="echo about to fail; exit 3"
    }
}
"""


async def test_job_and_run_pages_and_event_links(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    base = harness.orchestrator.web.url
    events: list[JobEvent] = []

    async def collect(delivery: Delivery) -> None:
        events.append(decode(delivery.body, JobEvent))
        await delivery.ack()

    await harness.orchestrator.broker.consume_events("pages-test", collect)
    summary = await harness.run(WORKFLOW)
    assert summary.state == "failure"
    job = summary.jobs[0]
    async with httpx.AsyncClient(base_url=base, headers=AUTH) as http:
        page = await http.get(f"/jobs/{job.job_id}")
        assert page.status_code == 200
        assert "&lt;b&gt;hello&lt;/b&gt; from the job" in page.text  # escaped, not markup
        assert "about to fail" in page.text and "failure" in page.text
        assert "<script>" not in page.text  # the job ended: nothing to follow

        raw = await http.get(f"/jobs/{job.job_id}/log.txt")
        assert raw.headers["X-Solstice-Done"] == "1"
        last = int(raw.headers["X-Solstice-Last-Seq"])
        assert b"<b>hello</b> from the job" in raw.content
        tail = await http.get(f"/jobs/{job.job_id}/log.txt", params={"after": last})
        assert tail.content == b"" and tail.headers["X-Solstice-Last-Seq"] == str(last)

        assert raw.headers["Content-Disposition"].startswith("attachment;")

        run_page = await http.get(f"/runs/{summary.run_id}")
        assert run_page.status_code == 200 and f"href='/jobs/{job.job_id}'" in run_page.text

        assert (await http.get(f"/jobs/{uuid.uuid4()}")).status_code == 404
        assert (await http.get("/jobs/not-a-uuid")).status_code == 404
        assert (await http.get(f"/jobs/{job.job_id}/log.txt?after=x")).status_code == 400

    for _ in range(100):
        if any(e.state == JobState.FAILURE for e in events):
            break
        await asyncio.sleep(0.05)
    final = [e for e in events if e.state == JobState.FAILURE]
    assert final and final[0].log_url.startswith(f"{base}/jobs/{job.job_id}?grant={summary.run_id}.")


async def test_a_running_job_page_follows_the_log(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    run_id = await harness.submit('workflow { job id="slow" runs_on="local" {'
                                  ' step name="s" run="echo first; sleep 2; echo second"; }; }')
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        for _ in range(200):
            summary = await harness.api.summary(run_id)
            raw = await http.get(f"/jobs/{summary.jobs[0].job_id}/log.txt")
            if b"first" in raw.content:
                break
            await asyncio.sleep(0.05)
        assert raw.headers["X-Solstice-Done"] == "0"
        page = await http.get(f"/jobs/{summary.jobs[0].job_id}")
        assert "<script>" in page.text  # still running: the page follows the event stream
        assert f"data-events='/jobs/{summary.jobs[0].job_id}/events?attempt=1'" in page.text
    assert (await harness.api.wait(run_id)).state == "success"


async def test_an_id_prefix_redirects_to_the_full_id(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    summary = await harness.run(WORKFLOW)
    run_id, job_id = str(summary.run_id), str(summary.jobs[0].job_id)
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        moved = await http.get(f"/runs/{run_id[:8]}")
        assert moved.status_code == 307 and moved.headers["location"] == run_id
        page = await http.get(f"/runs/{run_id[:8].upper()}", follow_redirects=True)
        assert page.status_code == 200 and str(page.url).endswith(f"/runs/{run_id}")

        job_page = await http.get(f"/jobs/{job_id[:13]}", follow_redirects=True)
        assert str(job_page.url).endswith(f"/jobs/{job_id}")
        # Steps are numbered from 1, as `ciadm show` numbers them.
        assert "<summary>1. greet " in job_page.text
        assert "<summary>2. boom " in job_page.text

        log = await http.get(f"/jobs/{job_id[:8]}/log.txt", params={"after": 0},
                             follow_redirects=True)
        assert str(log.url).endswith(f"/jobs/{job_id}/log.txt?after=0")
        assert b"about to fail" in log.content

        too_short = await http.get(f"/runs/{run_id[:7]}")
        assert too_short.status_code == 404 and "at least 8 characters" in too_short.text
        for pattern in ("%25%25%25%25%25%25%25%25", "________", f"{run_id[:8]}%25"):
            assert (await http.get(f"/runs/{pattern}")).status_code == 404  # no LIKE wildcards
        assert (await http.get("/jobs/00000000")).status_code == 404


async def test_the_run_list_filters_pages_and_links_to_the_forge(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    forge = Repo(forge="forgejo", owner="acme", name="widget",
                 clone_url="https://bot:s3cret@forge.example/acme/widget.git")
    other = Repo(forge="github", owner="acme", name="gadget",
                 clone_url="https://github.com/acme/gadget.git")
    broken = "not a workflow {"  # ends at intake (failure): no job to wait for
    first = await harness.submit(broken, repo=forge, commit_sha="a" * 40)
    second = await harness.submit(broken, repo=forge, commit_sha="b" * 40, branch="fix",
                                  ref="refs/pull/7/head", event=EventKind.PULL_REQUEST,
                                  pull_request=7)
    third = await harness.submit(broken, repo=other, commit_sha="c" * 40,
                                 event=EventKind.MANUAL)
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        async def listed(**filters: str) -> list[str]:
            page = await http.get("/", params=filters)
            assert page.status_code == 200
            return re.findall(r"href='/runs/([0-9a-f-]{36})'", page.text)

        assert await listed() == [str(third), str(second), str(first)]  # newest first
        assert (await http.get("/runs")).text == (await http.get("/")).text
        assert await listed(repository="acme/widget") == [str(second), str(first)]
        assert await listed(repository="acme") == [str(third), str(second), str(first)]
        assert await listed(repository="acme/gadget/x") == []
        assert await listed(repository="acme/widget", branch="main") == [str(first)]
        assert await listed(event="manual") == [str(third)]
        assert await listed(state="failure", event="push") == [str(first)]
        assert await listed(state="running") == []
        assert await listed(before=str(second)) == [str(first)]
        assert (await http.get("/", params={"before": "x"})).status_code == 400

        page = (await http.get("/", params={"repository": "acme/widget"})).text
        assert f"href='https://forge.example/acme/widget/commit/{'b' * 40}'>bbbbbbbbbb<" in page
        assert "href='https://forge.example/acme/widget/pull/7'>#7<" in page
        assert "s3cret" not in page and "bot@" not in page
        assert ">refs/pull/7/head<" in page and "pull_request" in page

    older = await list_runs(harness.orchestrator.db, {}, limit=2)
    assert [r.run_id for r in older.rows] == [third, second] and older.older == second
    rest = await list_runs(harness.orchestrator.db, {}, before=older.older, limit=2)
    assert [r.run_id for r in rest.rows] == [first] and rest.older is None


async def test_the_run_page_shows_trust_approval_and_the_pull_request(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    run_id = await harness.submit(
        'workflow name="pr" { job id="j" runs_on="local" { step name="s" run="true"; }; }',
        trusted=False, needs_approval=True, event=EventKind.PULL_REQUEST, pull_request=12,
        base_branch="main", branch="feature", ref="refs/pull/12/head")
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        page = (await http.get(f"/runs/{run_id}")).text
        assert "<dt>trust</dt><dd>untrusted (no secrets)</dd>" in page
        assert "<dt>approval</dt><dd>waiting for a maintainer's approval</dd>" in page
        assert "<dt>pull request</dt><dd>#12 into main</dd>" in page  # local: no forge link
        assert "<dt>branch</dt><dd>feature</dd>" in page
        assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
        assert "<script>" in page  # the run is active: the page follows it
        assert await harness.api.approve_run(run_id, "alice")
        await harness.api.wait(run_id)
        page = (await http.get(f"/runs/{run_id}")).text
        assert "<dt>approval</dt><dd>approved by alice at " in page and "<script>" not in page
        assert "<dt>gate</dt><dd><span class='state success'>accepted</span></dd>" in page


async def test_badges_are_public_and_follow_the_last_run(orchestrator_factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    name = harness.source.name
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url) as http:  # no token
        async def badge(query: str = "") -> str:
            answer = await http.get(f"/badge/local/{name}.svg{query}")
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "image/svg+xml"
            assert answer.headers["cache-control"] == "max-age=60"
            return re.search(r'aria-label="build: (\w+)"', answer.text).group(1)

        assert await badge() == "unknown"
        assert (await http.get("/")).status_code == 401  # the pages stay behind the token
        await harness.submit("broken {")
        assert await badge() == "failing" and await badge("?branch=main") == "failing"
        assert await badge("?branch=dev") == "unknown"
        run_id = await harness.submit('workflow name="w" { job id="j" runs_on="local" {'
                                      ' step name="s" run="sleep 1"; }; }')
        assert await badge() == "running"
        assert await badge("?workflow=w") == "running"
        assert await badge("?workflow=other") == "unknown"
        await harness.api.wait(run_id)
        assert await badge() == "passing"
        await harness.submit("broken {", event=EventKind.PULL_REQUEST, pull_request=3)
        assert await badge() == "passing"  # pull requests do not colour the branch's badge


async def test_links_start_with_the_path_of_public_url(orchestrator_factory) -> None:
    # Behind a proxy serving the pages under /solstice (and stripping it on the way in).
    harness = await orchestrator_factory(web_listen="127.0.0.1:0",
                                         public_url="https://ci.example/solstice/")
    run_id = await harness.submit('workflow { job id="j" runs_on="local" { step name="s"'
                                  ' run="sleep 1"; }; }')
    job_id = (await harness.api.summary(run_id)).jobs[0].job_id
    async with httpx.AsyncClient(base_url=harness.orchestrator.web.url, headers=AUTH) as http:
        job_page = (await http.get(f"/jobs/{job_id}")).text
        assert f"data-events='/solstice/jobs/{job_id}/events?attempt=" in job_page
        assert f"href='/solstice/runs/{run_id}'" in job_page
        assert f"href='/solstice/jobs/{job_id}/log.txt' download" in job_page
        run_page = (await http.get(f"/runs/{run_id}")).text
        assert f"data-events='/solstice/runs/{run_id}/events'" in run_page
        assert f"href='/solstice/jobs/{job_id}'" in run_page and "href='/solstice/'" in run_page
    await harness.api.wait(run_id)


def test_forge_links_come_only_from_http_clone_urls() -> None:
    assert forge_web_url({"clone_url": "https://u:p@forge.example:3000/a/b.git"}) == \
        "https://forge.example:3000/a/b"
    for url in ("file:///src", "git@github.com:a/b.git", "javascript:alert(1)",
                "https://forge.example:99999/a/b.git", "https:///a/b", ""):
        assert forge_web_url({"clone_url": url}) is None, url
    assert forge_web_url({}) is None
