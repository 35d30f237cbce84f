"""`/metrics` of an orchestrator, scraped without credentials after a real run (real Postgres,
gRPC, the local backend and the runner): the histograms, counters and gauges of
docs/metrics.md move as the run went."""
from __future__ import annotations

import asyncio

from tests.metrics import scrape, value
from tests.orchestrator.conftest import Factory

WORKFLOW = """
workflow name="metered" {
    job id="build" runs_on="local" {
        step name="talk" run="printf 'one\\ntwo\\nthree\\n'"
    }
}
"""
NOBODY = """
workflow name="stranded" {
    job id="build" runs_on="nobody-serves-this" {
        step name="never" run="true"
    }
}
"""


async def test_metrics_after_a_real_run(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(web_listen="127.0.0.1:0")
    base = harness.orchestrator.web.url
    host = harness.orchestrator.config.host_name
    local = {"label": "local", "backend": "local"}
    before = await scrape(base)

    summary = await harness.run(WORKFLOW)
    assert summary.state == "success"
    stranded = await harness.submit(NOBODY)
    await asyncio.sleep(1.2)
    after = await scrape(base)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("solstice_job_duration_seconds_count", **local) == 1
    assert grew("solstice_job_provision_seconds_count", **local) == 1
    assert grew("solstice_job_boot_seconds_count", **local) == 1
    assert 0 < grew("solstice_job_boot_seconds_sum", **local) < grew(
        "solstice_job_duration_seconds_sum", **local)
    assert grew("solstice_jobs_finished_total", state="success", label="local") == 1
    assert grew("solstice_runner_log_lines_total", label="local") >= 3
    assert grew("solstice_runner_log_bytes_total", label="local") >= len("one\ntwo\nthree\n")

    assert value(after, "solstice_queue_depth", label="nobody-serves-this") == 1
    assert value(after, "solstice_queue_oldest_wait_seconds", label="nobody-serves-this") >= 1
    assert value(after, "solstice_queue_depth", label="local") == 0
    assert value(after, "solstice_jobs", state="queued") == 1
    assert value(after, "solstice_jobs", state="running") == 0
    assert value(after, "solstice_host_capacity", host=host, label="local") == 4
    assert value(after, "solstice_host_running_jobs", host=host, label="local") == 0
    assert ("solstice_outbox_backlog", frozenset({("outbox", "orchestrator")})) in after

    await harness.api.cancel_run(stranded)
    cleared = await scrape(base)
    assert value(cleared, "solstice_queue_depth", label="nobody-serves-this") == 0
    assert value(cleared, "solstice_jobs", state="queued") == 0
