"""Secrets reach only the jobs that declare them, and never a stored or watched log line."""
from __future__ import annotations

from common.messages import JobState
from orchestrator.updates import LogUpdate
from tests.orchestrator.conftest import Factory

SECRET = "sup3r-s3cret-value"
PEM = "-----BEGIN KEY-----\nAAAAline1secret\nBBBBline2secret\n-----END KEY-----"

WORKFLOW = '''
workflow {
    job id="uses" runs_on="local" {
        secrets "API_KEY" "PEM_KEY"
        step name="leak" run="echo plain=$API_KEY; echo x${API_KEY}y; printf '%s' \\"$API_KEY\\" | cut -c1-4; printf '%s\\n' \\"$PEM_KEY\\"; echo done"
    }
    job id="other" runs_on="local" {
        step name="no secret here" run="echo other=[${API_KEY:-unset}]"
    }
}'''  # noqa: E501 (a KDL step line)


async def test_secrets_are_masked_end_to_end(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(secrets={"API_KEY": SECRET, "PEM_KEY": PEM})
    lines: list[bytes] = []
    with harness.api.watch(kinds=(LogUpdate,)) as watch:
        summary = await harness.run(WORKFLOW)
        while not watch.queue.empty():
            lines.append(watch.queue.get_nowait().data)
    assert summary.state == "success", summary
    uses = next(j for j in summary.jobs if j.key == "uses")
    other = next(j for j in summary.jobs if j.key == "other")
    stored = await harness.logs(uses.job_id)
    live = b"".join(lines)
    for text in (stored, live):
        assert SECRET.encode() not in text
        assert b"line1secret" not in text and b"line2secret" not in text
        assert b"plain=***" in text and b"x***y" in text
        assert b"sup3\n" in text  # a 4-character piece of a secret is not the secret
        assert b"done" in text
    assert b"other=[unset]" in await harness.logs(other.job_id)


async def test_untrusted_runs_get_no_secrets(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(secrets={"API_KEY": SECRET, "PEM_KEY": PEM})
    summary = await harness.run(WORKFLOW, trusted=False)
    uses = next(j for j in summary.jobs if j.key == "uses")
    assert uses.state == JobState.SUCCESS
    assert b"plain=\n" in await harness.logs(uses.job_id)


async def test_a_missing_secret_fails_the_job(orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(secrets={"API_KEY": SECRET})
    summary = await harness.run(WORKFLOW)
    uses = next(j for j in summary.jobs if j.key == "uses")
    assert uses.state == JobState.FAILURE
    assert "PEM_KEY" in uses.message and "--secret" in uses.message
    assert SECRET not in uses.message
