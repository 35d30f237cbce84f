"""Approval from GitHub: the "Approve and run" button of a waiting check run and
`/solstice approve` comments, as GitHub sends them (the octokit bodies, pointed at the fake's
repository and signed), checked against the commenter's permission at the fake GitHub."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from common.broker.memory import MemoryBroker
from common.messages import RunApproval
from tests.fakes.github_api import FakeGitHub
from tests.github.test_webhooks import (
    BASE_WORKFLOW,
    INSTALLATION,
    OWNER,
    REPO,
    Stack,
    load,
    running_stack,
)


@pytest.fixture
async def stack(pg_dsn: str, app_key) -> AsyncIterator[Stack]:
    async with FakeGitHub(1, app_key.public_key()) as fake, \
            MemoryBroker(f"gh-{uuid.uuid4().hex[:8]}") as broker, \
            running_stack(pg_dsn, fake, app_key, broker) as built:
        fake.add_repo(OWNER, REPO, installation_ids={1, INSTALLATION},
                      files={("master", ".solstice/workflow.kdl"): BASE_WORKFLOW})
        yield built


RUN_ID = uuid.UUID("5b7a3a57-0000-4000-8000-000000000001")


def button(sender: str, *, identifier: str = "approve",
           external_id: str = f"{RUN_ID}/build") -> dict:
    """The octokit `check_run.requested_action` body, on one of Solstice's check runs."""
    body = load("check_run/requested_action.payload.json")
    hello = load("issue_comment/created.with-installation.payload.json")
    body["repository"], body["installation"] = hello["repository"], {"id": 1}
    body.pop("organization")
    body["check_run"]["external_id"] = external_id
    body["check_run"]["name"] = "solstice/ci/build"
    body["requested_action"] = {"identifier": identifier}
    body["sender"] = {**body["sender"], "login": sender}
    return body


def comment(author: str, text: str, *, on_pull_request: bool = True) -> dict:
    """The octokit `issue_comment.created` body (with an installation), on pull request 2."""
    body = load("issue_comment/created.with-installation.payload.json")
    body["installation"] = {"id": 1}
    body["comment"]["body"] = text
    body["comment"]["user"] = {**body["comment"]["user"], "login": author}
    body["sender"] = {**body["sender"], "login": author}
    body["issue"]["number"] = 2
    if on_pull_request:
        body["issue"]["pull_request"] = {
            "url": f"https://api.github.com/repos/{OWNER}/{REPO}/pulls/2",
            "html_url": f"https://github.com/{OWNER}/{REPO}/pull/2"}
    return body


def approvals(stack: Stack) -> list[RunApproval]:
    return [m for m in stack.runs if isinstance(m, RunApproval)]


def writer(fake: FakeGitHub, login: str, permission: str) -> None:
    fake.repos[f"{OWNER}/{REPO}".lower()].permissions[login] = permission


async def test_approve_and_run_button_by_a_writer_publishes_the_approval(stack: Stack) -> None:
    writer(stack.fake, "maintainer", "write")
    response = await stack.post("check_run", button("maintainer"))
    assert response.status_code == 202, response.text
    assert response.json()["outcome"] == "accepted"
    entry = await stack.settled(response.json()["delivery"])
    assert entry.outcome.startswith("approval published"), entry
    await stack.published(1)
    [approval] = approvals(stack)
    assert approval.run_id == RUN_ID and approval.actor == "maintainer"
    assert approval.repo.full_name == f"{OWNER}/{REPO}" and approval.repo.forge == "github"
    assert approval.pull_request is None
    assert ("GET", f"/repos/{OWNER}/{REPO}/collaborators/maintainer/permission") \
        in stack.fake.requests


async def test_button_by_someone_without_write_access_starts_nothing(stack: Stack) -> None:
    writer(stack.fake, "drive-by", "read")
    response = await stack.post("check_run", button("drive-by"))
    assert response.status_code == 202 and response.json()["outcome"] == "accepted"
    entry = await stack.settled(response.json()["delivery"])
    assert entry.state.value == "ignored" and "no write access" in entry.outcome, entry
    assert await stack.published(0) == []


async def test_other_requested_actions_are_not_approvals(stack: Stack) -> None:
    other = await stack.post("check_run", button("maintainer", identifier="lgtm"))
    foreign = await stack.post("check_run", button("maintainer", external_id=""))
    assert [other.status_code, foreign.status_code] == [200, 200]
    assert await stack.published(0) == []
    assert not any("permission" in path for _, path in stack.fake.requests)


async def test_comment_by_a_writer_approves_the_pull_requests_waiting_runs(stack: Stack) -> None:
    writer(stack.fake, "maintainer", "admin")
    body = comment("maintainer", "Read it; fine.\r\n/solstice approve 6113728F\r\n")
    response = await stack.post("issue_comment", body)
    assert response.status_code == 202, response.text
    await stack.published(1)
    [approval] = approvals(stack)
    assert (approval.pull_request, approval.actor, approval.commit_prefix) == (2, "maintainer",
                                                                               "6113728f")
    assert approval.run_id is None
    assert approval.requested_at == datetime.fromisoformat(
        body["comment"]["created_at"].replace("Z", "+00:00"))
    assert stack.fake.comments == []


async def test_comment_by_someone_without_write_access_is_answered(stack: Stack) -> None:
    writer(stack.fake, "contributor", "read")
    response = await stack.post("issue_comment", comment("contributor", "/solstice approve"))
    assert response.status_code == 202 and response.json()["outcome"] == "accepted"
    entry = await stack.settled(response.json()["delivery"])
    assert entry.state.value == "ignored" and "write access" in entry.outcome, entry
    assert await stack.published(0) == []
    [reply] = stack.fake.comments
    assert reply.number == 2 and reply.body.startswith("@contributor:")
    assert "write access" in reply.body and "ciadm" not in reply.body


async def test_comments_that_approve_nothing_are_ignored(stack: Stack) -> None:
    writer(stack.fake, "maintainer", "write")
    for body in (comment("maintainer", "please /solstice approve this"),
                 comment("maintainer", "/solstice approve", on_pull_request=False)):
        response = await stack.post("issue_comment", body)
        assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    edited = comment("maintainer", "/solstice approve") | {"action": "edited"}
    assert (await stack.post("issue_comment", edited)).status_code == 200
    assert await stack.published(0) == []
    assert not any("permission" in path for _, path in stack.fake.requests)


async def test_a_redelivered_approval_is_published_once(stack: Stack) -> None:
    writer(stack.fake, "maintainer", "write")
    body = comment("maintainer", "/solstice approve")
    first = await stack.post("issue_comment", body, delivery="approval-1")
    again = await stack.post("issue_comment", body, delivery="approval-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["outcome"] == "duplicate"
    await stack.published(2)
    assert len(approvals(stack)) == 1
