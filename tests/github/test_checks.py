"""Check runs: the bodies built from job events, and their lifecycle at the fake GitHub."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from common.messages import JobEvent, JobState
from github_integration.api import GitHubApi
from github_integration.checks import (
    ANNOTATIONS_PER_REQUEST,
    TEXT_LIMIT,
    check_run_requests,
    parse_annotations,
)
from github_integration.db import open_database
from github_integration.errors import GitHubApiError
from github_integration.reporter import CheckRunReporter, CheckRunStore
from tests.fakes.github_api import FakeGitHub, validate_check_run_body
from tests.github.conftest import REPOSITORY

SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


def job_event(state: JobState, sequence: int, *, job_id: uuid.UUID | None = None,
              run_id: uuid.UUID | None = None, **fields) -> JobEvent:
    return JobEvent(run_id=run_id or uuid.UUID(int=1), job_id=job_id or uuid.UUID(int=2),
                    job_key="build", workflow_name="ci", state=state, sequence=sequence,
                    repo=REPOSITORY, commit_sha=SHA, request_id="r1",
                    log_url="https://ci.example/runs/1/jobs/build", **fields)


def diagnostics(count: int) -> str:
    return "\n".join(f"src/file{i}.c:{i + 1}:{i % 7 + 1}: error: thing {i} is wrong"
                     for i in range(count))


@pytest.fixture
async def reporter(pg_dsn: str, github_api: GitHubApi) -> AsyncIterator[CheckRunReporter]:
    pool = await open_database(pg_dsn, min_size=1, max_size=2)
    yield CheckRunReporter(github_api, CheckRunStore(pool))
    await pool.close()


# ---- bodies -------------------------------------------------------------------------------

@pytest.mark.parametrize("state, status, conclusion", [
    (JobState.QUEUED, "queued", None),
    (JobState.PROVISIONING, "in_progress", None),
    (JobState.RUNNING, "in_progress", None),
    (JobState.SUCCESS, "completed", "success"),
    (JobState.FAILURE, "completed", "failure"),
    (JobState.ERROR, "completed", "failure"),
    (JobState.CANCELLED, "completed", "cancelled"),
    (JobState.TIMED_OUT, "completed", "timed_out"),
    (JobState.SKIPPED, "completed", "neutral"),
    (JobState.AWAITING_APPROVAL, "completed", "action_required"),
])
def test_every_state_maps_to_a_valid_body(state: JobState, status: str, conclusion) -> None:
    requests = check_run_requests(job_event(state, 1), create=True)
    body = requests.first
    validate_check_run_body(body, create=True)
    assert body["status"] == status and body.get("conclusion") == conclusion
    assert body["name"] == "solstice/ci/build" and body["head_sha"] == SHA
    assert body["details_url"] == "https://ci.example/runs/1/jobs/build"


def test_error_is_a_failure_titled_infrastructure() -> None:
    body = check_run_requests(job_event(JobState.ERROR, 3, description="zone boot failed"),
                              create=False).first
    assert body["conclusion"] == "failure"
    assert "Infrastructure" in body["output"]["title"]
    assert "zone boot failed" in body["output"]["summary"]


def test_approval_check_run_offers_the_button_and_the_comment() -> None:
    body = check_run_requests(job_event(JobState.AWAITING_APPROVAL, 1), create=True).first
    assert body["conclusion"] == "action_required"
    assert body["actions"] == [{"label": "Approve and run", "description": "Run this untrusted code",
                                "identifier": "approve"}]
    summary = body["output"]["summary"]
    assert "/solstice approve" in summary and "maintainer" in summary
    assert "ciadm" not in summary and str(uuid.UUID(int=1)) not in summary
    validate_check_run_body(body, create=True)


def test_failure_summary_has_step_and_log_tail() -> None:
    body = check_run_requests(job_event(JobState.FAILURE, 4, failing_step="make test",
                                        log_tail="compiling\nFAIL: test_x\n"), create=False).first
    assert body["output"]["title"] == "Failed in step `make test`"
    assert "FAIL: test_x" in body["output"]["summary"]


def test_huge_log_tail_is_cut_to_its_end_within_the_limit() -> None:
    tail = "".join(f"line {i} é\n" for i in range(20_000)) + "the last line\n"
    body = check_run_requests(job_event(JobState.FAILURE, 4, failing_step="s", log_tail=tail),
                              create=False).first
    summary = body["output"]["summary"]
    assert len(summary.encode()) <= TEXT_LIMIT
    assert "the last line" in summary and "line 0 é" not in summary
    validate_check_run_body(body, create=False)


def test_log_with_backticks_cannot_close_the_fence() -> None:
    body = check_run_requests(job_event(JobState.FAILURE, 4, log_tail="a ```` b\n"),
                              create=False).first
    assert "`````\n" in body["output"]["summary"]


def test_annotations_parsed_from_diagnostics() -> None:
    log = ("\x1b[31m./src/main.c:12:5: error: expected ';'\x1b[0m\n"
           "src/main.c:12:5: error: expected ';'\n"  # the same diagnostic twice
           "lib/util.py:7: warning: unused import\n"
           "/usr/include/stdio.h:3:1: note: outside the checkout\n"
           "make: *** [all] Error 1\n"
           "Makefile:3:1: note: in target all\n")
    assert parse_annotations(log) == [
        {"path": "src/main.c", "start_line": 12, "end_line": 12, "start_column": 5,
         "end_column": 5, "annotation_level": "failure", "message": "error: expected ';'"},
        {"path": "lib/util.py", "start_line": 7, "end_line": 7, "annotation_level": "warning",
         "message": "warning: unused import"},
        {"path": "Makefile", "start_line": 3, "end_line": 3, "start_column": 1, "end_column": 1,
         "annotation_level": "notice", "message": "note: in target all"},
    ]


def test_annotations_come_in_batches_of_fifty() -> None:
    requests = check_run_requests(job_event(JobState.FAILURE, 4, log_tail=diagnostics(120)),
                                  create=False)
    sizes = [len(requests.first["output"]["annotations"])]
    sizes += [len(body["output"]["annotations"]) for body in requests.more]
    assert sizes == [50, 50, 20]
    for body in [requests.first, *requests.more]:
        validate_check_run_body(body, create=False)


def test_success_carries_no_annotations() -> None:
    body = check_run_requests(job_event(JobState.SUCCESS, 4, log_tail=diagnostics(3)),
                              create=False).first
    assert "annotations" not in body["output"]


# ---- lifecycle against the fake ------------------------------------------------------------

async def test_lifecycle_queued_running_completed(reporter: CheckRunReporter,
                                                  fake_github: FakeGitHub) -> None:
    await reporter.deliver(job_event(JobState.QUEUED, 1))
    await reporter.deliver(job_event(JobState.RUNNING, 2))
    await reporter.deliver(job_event(JobState.FAILURE, 3, failing_step="make",
                                     log_tail=diagnostics(120)))
    [run] = fake_github.check_runs.values()
    assert [b.get("status") for b in run.history[:3]] == ["queued", "in_progress", "completed"]
    assert run.status == "completed" and run.conclusion == "failure"
    assert len(run.history) == 5  # create, running, failure, then two annotation PATCHes
    assert len(run.annotations) == 120
    assert run.details_url == "https://ci.example/runs/1/jobs/build"
    assert run.external_id == f"{uuid.UUID(int=1)}/build"


async def test_retry_resumes_without_duplicates(reporter: CheckRunReporter,
                                                fake_github: FakeGitHub) -> None:
    await reporter.deliver(job_event(JobState.QUEUED, 1))
    failure = job_event(JobState.FAILURE, 2, log_tail=diagnostics(120))
    fake_github.fail(1, status=500, path_contains="/check-runs/")
    with pytest.raises(GitHubApiError) as caught:
        await reporter.deliver(failure)  # refused before anything changed
    assert caught.value.retryable
    await reporter.deliver(failure)
    await reporter.deliver(failure)  # a second redelivery changes nothing either
    [run] = fake_github.check_runs.values()
    assert len(run.annotations) == 120 and run.conclusion == "failure"


async def test_retry_after_partial_annotations(reporter: CheckRunReporter,
                                               fake_github: FakeGitHub) -> None:
    await reporter.deliver(job_event(JobState.QUEUED, 1))
    failure = job_event(JobState.FAILURE, 2, log_tail=diagnostics(120))
    # The completing PATCH and the first annotation batch pass; the second batch fails.
    fake_github.fail(1, status=503, path_contains="/check-runs/", after=2)
    with pytest.raises(GitHubApiError):
        await reporter.deliver(failure)
    [run] = fake_github.check_runs.values()
    assert len(run.annotations) == 100
    await reporter.deliver(failure)
    assert len(run.annotations) == 120 and len(run.history) == 4


async def test_approval_then_new_check_run(reporter: CheckRunReporter,
                                           fake_github: FakeGitHub) -> None:
    await reporter.deliver(job_event(JobState.AWAITING_APPROVAL, 1))
    await reporter.deliver(job_event(JobState.QUEUED, 2))
    await reporter.deliver(job_event(JobState.SUCCESS, 3))
    first, second = sorted(fake_github.check_runs.values(), key=lambda run: run.id)
    assert first.conclusion == "action_required"
    assert second.conclusion == "success" and second.name == first.name


async def test_stale_event_is_dropped(reporter: CheckRunReporter,
                                      fake_github: FakeGitHub) -> None:
    await reporter.deliver(job_event(JobState.SUCCESS, 5))
    await reporter.deliver(job_event(JobState.RUNNING, 4))
    [run] = fake_github.check_runs.values()
    assert run.conclusion == "success" and len(run.history) == 1


async def test_fake_refuses_what_github_refuses(github_api: GitHubApi,
                                                fake_github: FakeGitHub) -> None:
    bad = [
        {"name": "x", "head_sha": SHA, "status": "completed"},  # no conclusion
        {"name": "x", "head_sha": SHA, "conclusion": "stale"},
        {"name": "x", "head_sha": SHA, "output": {"title": "t", "summary": "s" * (TEXT_LIMIT + 1)}},
        {"name": "x", "head_sha": SHA, "output": {"title": "t", "summary": "s", "annotations": [
            {"path": "a", "start_line": 1, "end_line": 1, "annotation_level": "notice",
             "message": "m"}] * (ANNOTATIONS_PER_REQUEST + 1)}},
        {"name": "x", "head_sha": SHA, "output": {"title": "t", "summary": "s", "annotations": [
            {"path": "a", "start_line": 1, "end_line": 1, "annotation_level": "error",
             "message": "m"}]}},
        {"head_sha": SHA},
    ]
    for body in bad:
        with pytest.raises(GitHubApiError) as caught:
            await github_api.create_check_run(REPOSITORY, body)
        assert caught.value.status == 422 and not caught.value.retryable
    assert fake_github.check_runs == {}


async def test_huge_failure_is_accepted_by_the_fake(reporter: CheckRunReporter,
                                                    fake_github: FakeGitHub) -> None:
    tail = "x" * 200_000 + "\n" + diagnostics(60)
    await reporter.deliver(job_event(JobState.FAILURE, 1, failing_step="s", log_tail=tail))
    [run] = fake_github.check_runs.values()
    assert len(run.output["summary"]) <= TEXT_LIMIT and len(run.annotations) == 60
