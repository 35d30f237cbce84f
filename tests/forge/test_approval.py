"""`/solstice approve` comments from Forgejo and Gitea: the `issue_comment` body built from the
forges' documented structure (tests/fixtures/README.md), signed as they sign it, checked
against the commenter's permission at the fake forge."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from common.messages import RunApproval
from tests.fixtures import FIXTURES
from tests.forge.conftest import Harness

BODY = json.loads((FIXTURES / "forgejo" / "built" / "HookIssueCommentPullRequest.json").read_text())


def commented(author: str, text: str) -> dict:
    body = json.loads(json.dumps(BODY))
    body["comment"]["body"] = text
    body["comment"]["user"] = body["sender"] = {**body["sender"], "login": author,
                                                "username": author}
    return body


def may(harness: Harness, login: str, permission: str) -> None:
    harness.forge.repos["gordon/hello-world"].permissions[login] = permission
    harness.forge.users.add(login)


def approvals(harness: Harness) -> list[RunApproval]:
    return [m for m in harness.runs if isinstance(m, RunApproval)]


@pytest.mark.parametrize("kind", ["forgejo", "gitea"])
async def test_comment_by_a_writer_approves_the_pull_requests_runs(harness: Harness,
                                                                   kind: str) -> None:
    may(harness, "maintainer", "write")
    response = await harness.post(BODY, "issue_comment", forge=kind)
    assert response.status_code == 202, response.text
    assert response.json()["outcome"] == "accepted"
    entry = await harness.settled(response.json()["delivery"], forge=kind)
    assert entry.outcome.startswith("approval published"), entry
    await harness.wait_for(lambda: len(harness.runs) == 1)
    [approval] = approvals(harness)
    assert (approval.repo.forge, approval.repo.full_name) == (kind, "gordon/hello-world")
    assert (approval.pull_request, approval.actor, approval.run_id) == (1, "maintainer", None)
    assert approval.requested_at == datetime(2024, 5, 2, 10, 5, tzinfo=UTC)
    assert harness.forge.comments == []


async def test_comment_by_someone_without_write_access_is_answered(harness: Harness) -> None:
    may(harness, "contributor", "read")
    response = await harness.post(commented("contributor", "/solstice approve"), "issue_comment")
    assert response.status_code == 202 and response.json()["outcome"] == "accepted"
    entry = await harness.settled(response.json()["delivery"])
    assert entry.state.value == "ignored" and "write access" in entry.outcome, entry
    await harness.settle()
    assert harness.runs == []
    [reply] = harness.forge.comments
    assert (reply.owner, reply.repo, reply.index) == ("gordon", "hello-world", 1)
    assert reply.body.startswith("@contributor:") and "ciadm" not in reply.body


async def test_approval_for_a_commit_and_comments_without_a_command(harness: Harness) -> None:
    may(harness, "maintainer", "owner")
    plain = await harness.post(commented("maintainer", "looks good"), "issue_comment")
    assert plain.json()["outcome"] == "ignored"
    pinned = await harness.post(commented("maintainer", "/solstice approve 0D1A26E67D8F"),
                                "issue_comment")
    assert pinned.status_code == 202, pinned.text
    await harness.wait_for(lambda: len(harness.runs) == 1)
    assert approvals(harness)[0].commit_prefix == "0d1a26e67d8f"
