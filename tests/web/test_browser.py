"""The pages in a real headless Chromium against a real orchestrator (local backend): the job
page follows a running job's log without reloading and resumes after the connection dropped
with no line missing or repeated; colours are styled spans; a phone-width window has no
horizontal scroll; the run list, the run page (live, jobs by stage) and the badge.
Screenshots of each page land in test-output/web/."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.orchestrator.conftest import ADMIN_TOKEN
from tests.tcp_proxy import TcpProxy
from tests.web.browser import Browser

LINES = 40
# Each line numbered by the step, so a gap or a repeat after the reconnect shows.
COUNTING = ('workflow name="live" { job id="count" runs_on="local" { step name="count" run="'
            f"for i in $(seq 1 {LINES}); do printf '\\\\033[32mline %d\\\\033[0m\\\\n' $i; sleep 0.05;"
            ' done"; }; }')
STAGES = """
workflow name="stages" {
    job id="build" runs_on="local" { step name="b" run="echo built"; }
    job id="test" runs_on="local" { needs "build"; step name="t" run="echo tested"; }
    job id="lint" runs_on="local" { needs "build"; step name="l" run="echo linted"; }
    job id="ship" runs_on="local" { needs "test" "lint"; step name="s" run="sleep 2; echo shipped"; }
}
"""
NO_SIDE_SCROLL = "return document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    browser = Browser()
    yield browser
    browser.close()


async def signed_in(browser: Browser, base: str) -> None:
    """Present the token once, as a user would; the cookie keeps the browser signed in."""
    await browser.get(f"{base}/healthz")
    await browser.get(f"{base}/?token={ADMIN_TOKEN}")


async def test_the_job_page_follows_a_running_job_and_resumes_after_a_drop(
        orchestrator_factory, browser: Browser) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    web = httpx.URL(harness.orchestrator.web.url)
    proxy = TcpProxy(web.host, web.port)
    await proxy.start()
    base = f"http://127.0.0.1:{proxy.port}"
    run_id = await harness.submit(COUNTING)
    await browser.width(1280)
    await signed_in(browser, base)
    job_id = (await harness.api.summary(run_id)).jobs[0].job_id
    while b"line 3\x1b" not in await harness.logs(job_id):
        await asyncio.sleep(0.05)

    await browser.get(f"{base}/jobs/{job_id}")
    await browser.js("window.notReloaded = true")
    shown = "return [...document.querySelectorAll('.line .t')].map(e => e.textContent)" \
            ".filter(t => t.startsWith('line '))"
    at_load = len(await browser.js(shown))
    assert at_load < LINES
    await browser.until(f"{shown}.length > {at_load} + 5")  # new lines, no reload

    await proxy.stop()  # the connection drops; the job goes on printing
    await asyncio.sleep(0.5)
    await proxy.start()
    await browser.until("return document.getElementById('job-state').textContent == 'success'",
                        timeout=30)
    assert await browser.js("return window.notReloaded") is True
    assert await browser.js(shown) == [f"line {i}" for i in range(1, LINES + 1)]
    # Numbered in arrival order across the steps' sections: every number once.
    numbers = await browser.js("return [...document.querySelectorAll('.line')].map(e => e.id)")
    assert sorted(int(n[1:]) for n in numbers) == list(range(1, len(numbers) + 1))

    # Colours are styled spans, not escape codes.
    colour = await browser.js(
        "const s = document.querySelector('.line .t span.fg2');"
        "return s && [s.textContent, getComputedStyle(s).color]")
    assert colour == ["line 1", "rgb(63, 185, 80)"]
    assert "\x1b" not in await browser.js("return document.getElementById('log').textContent")
    await browser.screenshot("job-page")

    # A line anchor: linkable, highlighted on load.
    await browser.get(f"{base}/jobs/{job_id}#L5")
    assert await browser.js("return document.querySelector('.line:target').id") == "L5"
    assert await browser.js("return getComputedStyle(document.getElementById('L5'))"
                            ".backgroundColor") == "rgb(57, 48, 0)"

    await browser.width(390)
    await browser.get(f"{base}/jobs/{job_id}")
    assert await browser.js("return window.innerWidth") <= 390
    assert await browser.js(NO_SIDE_SCROLL)
    await browser.screenshot("job-page-390px")
    await browser.width(1280)
    await proxy.stop()


async def test_the_run_list_the_live_run_page_and_the_badge(orchestrator_factory,
                                                            browser: Browser) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    base = harness.orchestrator.web.url
    await browser.width(1280)
    await signed_in(browser, base)
    run_id = await harness.submit(STAGES)

    await browser.get(f"{base}/runs/{run_id}")
    await browser.js("window.notReloaded = true")
    columns = await browser.js("return [...document.querySelectorAll('#dag .column')]"
                               ".map(c => [...c.querySelectorAll('.job > a')].map(a => a.textContent))")
    assert columns == [["build"], ["test", "lint"], ["ship"]]
    assert await browser.js("return document.querySelector('#run .state').textContent") != "success"
    await browser.until("return document.querySelector('#run .state').textContent == 'success'",
                        timeout=30)
    assert await browser.js("return window.notReloaded") is True
    assert await browser.js("return document.querySelectorAll('#dag .job.success').length") == 4
    await browser.screenshot("run-page")

    await browser.get(f"{base}/")
    rows = await browser.js("return [...document.querySelectorAll('#runs tr')].slice(1)"
                            ".map(r => [...r.cells].map(c => c.textContent))")
    assert rows[0][0] == f"local/{harness.source.name}" and rows[0][1] == "refs/heads/main"
    assert rows[0][4] == "success"
    await browser.screenshot("run-list")
    await browser.width(390)
    for name, page in (("run-list", "/"), ("run-page", f"/runs/{run_id}")):
        await browser.get(f"{base}{page}")
        assert await browser.js(NO_SIDE_SCROLL), page
        await browser.screenshot(f"{name}-390px")
    await browser.width(1280)

    badge = f"{base}/badge/local/{harness.source.name}.svg?branch=main"
    await browser.get(badge)
    assert "passing" in await browser.js("return document.documentElement.outerHTML")
    await browser.screenshot("badge")
    async with httpx.AsyncClient() as http:  # no token: badges are public
        answer = await http.get(badge)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"
    assert answer.headers["cache-control"] == "max-age=60"
