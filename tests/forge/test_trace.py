"""One trace per run, across the real path: a signed Forgejo push to the integration, the
RunRequest over the real RabbitMQ, the orchestrator's intake, outbox, queue and lease, the
local backend's machine, the runner (a separate process, over gRPC), its steps and result, the
job events back over RabbitMQ and the commit statuses sent to the (fake) forge.

Spans are collected in this process with the in-memory exporter: the integration and the
orchestrator run here. The runner exports none; that it received the trace context and sent it
back is shown by the orchestrator's spans for its calls, which are children of what it sent
(`solstice.trace.from_runner`)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.broker import open_broker
from common.forge.migrate import open_pool
from common.forge.outbox import OutboxWorker
from common.forge.signature import sign
from common.http import running
from forge_integration.feedback import StatusSender
from forge_integration.main import clients_for
from forge_integration.service import ForgeIntegration
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import FAST, FIXTURES, SECRET, make_config
from tests.forge.test_e2e import make_repo
from tests.orchestrator.conftest import Factory, orchestrator_factory  # noqa: F401  (fixture)
from tests.tracing import spans  # noqa: F401  (fixture)

WORKFLOW = """workflow name="ci" {
    job id="good" runs_on="local" {
        step name="build" run="test -f .solstice/workflow.kdl && echo built"
    }
}
"""


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """The names of the span's parents, nearest first (within the spans collected)."""
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_one_trace_from_webhook_to_status(
        orchestrator_factory: Factory, spans: InMemorySpanExporter, pg_dsn: str,  # noqa: F811
        amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "repo")  # the runner checks this commit out
    harness = await orchestrator_factory(amqp_url=amqp_url, broker_prefix=broker_prefix)
    body = json.loads((FIXTURES / "forgejo" / "HookPush.json").read_text())
    body.update(after=sha, ref="refs/heads/main")
    body["repository"] = {**body["repository"], "id": 77, "name": "app", "full_name": "acme/app",
                          "owner": {"login": "acme", "username": "acme"},
                          "clone_url": f"file://{tmp_path / 'repo'}", "default_branch": "main"}
    raw = json.dumps(body).encode()
    pool = await open_pool(pg_dsn, min_size=1, max_size=4)
    broker = open_broker(amqp_url, broker_prefix)
    await broker.connect()
    try:
        async with FakeForgejo() as forge:
            forge.add_repo("acme", "app", repo_id=77, branches={"main": sha},
                           files={(sha, ".solstice/workflow.kdl"): WORKFLOW})
            config = make_config(forge)
            clients = clients_for(config)
            service = ForgeIntegration(config, pool, broker, clients)
            service.worker = OutboxWorker(service.outbox, StatusSender(clients), backoff=FAST,
                                          poll_interval=0.05, lease=3.0, send_timeout=2.0)
            async with running(service.app()) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                answer = await http.post("/webhooks/forgejo", content=raw, headers={
                    "Content-Type": "application/json", "X-Forgejo-Event": "push",
                    "X-Forgejo-Delivery": "trace-1", "X-Forgejo-Signature": sign(SECRET, raw)})
                assert answer.status_code == 202, answer.text
                await wait_until(lambda: [s.state for s in forge.statuses_for(
                    sha, "solstice/ci/good")][-1:] == ["success"], 90)
            for client in clients.values():
                await client.close()
        summary = await harness.api.wait(await harness.orchestrator.db.pool.fetchval(
            "SELECT id FROM runs WHERE request_id = 'trace-1'"))
        assert summary.state == "success"
    finally:
        await broker.close()
        await pool.close()

    collected = spans.get_finished_spans()
    [webhook] = [s for s in collected if s.name == "forge.webhook"]
    trace_id = webhook.context.trace_id
    mine = [s for s in collected if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in mine}
    names = {s.name for s in mine}
    for expected in ("run.intake", "outbox.publish job_request", "broker.queue_wait",
                     "job.lease", "job", "job.provision", "job.boot", "runner.GetJob",
                     "step build", "runner.ReportResult", "outbox.publish job_event",
                     "outbox.send"):
        assert expected in names, f"{expected} not in the run's trace: {sorted(names)}"
    # Nothing of the run went into another trace.
    strays = {s.name for s in collected if s.context.trace_id != trace_id
              and s.name in ("run.intake", "job", "step build", "runner.ReportResult")}
    assert strays == set()

    def one(name: str) -> ReadableSpan:
        return next(s for s in mine if s.name == name)

    assert "forge.webhook" in ancestors(one("run.intake"), by_id)
    job = one("job")
    assert ancestors(job, by_id)[:3] == ["broker.deliver", "outbox.publish job_request",
                                         "run.intake"]
    assert "forge.webhook" in ancestors(job, by_id)
    for child in ("job.provision", "job.boot", "runner.GetJob", "step build",
                  "runner.ReportResult"):
        assert ancestors(one(child), by_id)[0] == "job", child
    # The runner got the job span's context and sent it back on its calls.
    assert one("step build").attributes["solstice.trace.from_runner"] is True
    assert one("runner.ReportResult").attributes["solstice.trace.from_runner"] is True
    final_send = max((s for s in mine if s.name == "outbox.send"), key=lambda s: s.start_time)
    assert "job" in ancestors(final_send, by_id)
    assert ancestors(final_send, by_id)[:2] == ["broker.deliver", "outbox.publish job_event"]

    # In time: webhook, intake, queue wait, lease, provision, boot, step, result, status.
    order = [webhook, one("run.intake"), one("job.lease"), one("job.provision"), one("job.boot"),
             one("step build"), one("runner.ReportResult"), final_send]
    starts = [s.start_time for s in order]
    assert starts == sorted(starts), [(s.name, s.start_time) for s in order]
    waits = [s for s in mine if s.name == "broker.queue_wait"
             and s.parent is not None and by_id[s.parent.span_id].name == "outbox.publish job_request"]
    assert waits and waits[0].end_time <= one("job.lease").start_time


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
