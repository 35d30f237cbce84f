"""Run intake: idempotent on the request id, never drops a bad workflow, honours triggers and
job `if`s, and tells the forge through JobEvents."""
from __future__ import annotations

import asyncio

from common.broker import Delivery
from common.messages import EventKind, JobEvent, JobState, decode
from tests.orchestrator.conftest import Factory, run_request

GOOD = '''
workflow name="ci" {
    on "push" branches="main"
    job id="a" runs_on="local" { step name="x" run="true"; }
    job id="tagged" runs_on="local" { if "tag"; step name="x" run="true"; }
}'''


async def collect_events(harness, count: int) -> list[JobEvent]:
    events: list[JobEvent] = []
    done = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        events.append(decode(delivery.body, JobEvent))
        await delivery.ack()
        if len(events) >= count:
            done.set()

    subscription = await harness.orchestrator.broker.consume_events("test", handle)
    return events, done, subscription


async def test_a_request_twice_is_one_run(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory()
    request = run_request(GOOD, harness.source)
    first = await harness.api.submit(request)
    second = await harness.api.submit(request)
    assert first == second
    summary = await harness.api.wait(first)
    assert summary.state == "success"
    assert {j.key: j.state for j in summary.jobs} == {"a": JobState.SUCCESS,
                                                      "tagged": JobState.SKIPPED}
    count = await harness.orchestrator.db.pool.fetchval("SELECT count(*) FROM runs")
    assert count == 1


async def test_a_run_whose_trigger_does_not_match_is_skipped(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory()
    summary = await harness.run(GOOD, event=EventKind.PULL_REQUEST, branch="feature",
                                ref="refs/pull/1/head", pull_request=1)
    assert summary.state == "skipped"
    assert summary.jobs == []
    assert "pull_request" in summary.message


async def test_an_invalid_workflow_is_a_failed_run_with_diagnostics(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory()
    events, done, subscription = await collect_events(harness, 1)
    summary = await harness.run('workflow {\n    job id="a" {\n        step name="x"\n    }\n}\n')
    assert summary.state == "failure"
    assert ".solstice/workflow.kdl:2:" in summary.message
    diagnostics = await harness.orchestrator.db.pool.fetchval(
        "SELECT diagnostics FROM runs WHERE id = $1", summary.run_id)
    assert diagnostics and all("line" in d and "message" in d for d in diagnostics)
    await asyncio.wait_for(done.wait(), 10)
    await subscription.cancel()
    [event] = events
    assert event.job_key == "workflow" and event.state == JobState.FAILURE
    assert event.run_id == summary.run_id
    assert ".solstice/workflow.kdl:2:" in event.log_tail


async def test_job_events_follow_the_state_machine_in_order(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory()
    events, done, subscription = await collect_events(harness, 4)
    summary = await harness.run('workflow { job id="a" runs_on="local" { step name="x" run="true"; }; }')
    await asyncio.wait_for(done.wait(), 10)
    await subscription.cancel()
    assert summary.state == "success"
    assert [(e.state, e.sequence) for e in events] == [
        (JobState.QUEUED, 1), (JobState.PROVISIONING, 2), (JobState.RUNNING, 3),
        (JobState.SUCCESS, 4)]
    assert all(e.workflow_name == "" and e.request_id for e in events)
