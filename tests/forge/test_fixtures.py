"""Every captured Forgejo and Gitea webhook body gets its documented outcome.

The bodies carry no headers; the event each was sent with follows from its name (the
woodpecker-ci fixtures' own tests use the same events): `HookPush*` push, `HookTag` create
(Forgejo and Gitea announce a new tag with `create`, and push it with `push`), `HookRelease`
release, Gitea's review bodies `pull_request_review_*`, every other `HookPullRequest*`
pull_request.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.forge.inbox import InboxState
from common.messages import EventKind
from tests.forge.conftest import Harness, fixture_bodies

REVIEW_EVENTS = {"HookPullRequestReviewAck": "pull_request_review_approved",
                 "HookPullRequestReviewDeny": "pull_request_review_rejected",
                 "HookPullRequestReviewComment": "pull_request_review_comment"}
PUBLISHED = {"HookPush", "HookPushBranch", "HookPushMulti", "HookPullRequest",
             "HookPullRequestUpdated", "HookPullRequestReopened"}


def event_of(path: Path) -> str:
    name = path.stem
    if name.startswith("HookPush"):
        return "push"
    if name == "HookTag":
        return "create"
    if name == "HookRelease":
        return "release"
    return REVIEW_EVENTS.get(name, "pull_request")


def expected(path: Path) -> tuple[int, str]:
    """(HTTP status, outcome) documented for a fixture body."""
    if path.stem in PUBLISHED:
        return 202, "accepted"
    if path.stem == "HookRelease":
        return 400, "unsupported event 'release'"
    return 200, "ignored"


FORGES = ("forgejo", "gitea")


def test_every_fixture_is_covered() -> None:
    assert sum(len(fixture_bodies(kind)) for kind in FORGES) == 43
    assert {p.stem for kind in FORGES for p in fixture_bodies(kind)} >= PUBLISHED | {"HookTag",
                                                                                      "HookRelease"}


async def check_outcome(harness: Harness, kind: str, path: Path) -> str | None:
    """Post one signed body; the problem with what happened, None if it is as documented."""
    body = path.read_bytes()
    status, outcome = expected(path)
    harness.runs.clear()
    delivery = f"{kind}-{path.stem}"
    response = await harness.post(body, event_of(path), forge=kind, delivery=delivery)
    if response.status_code != status:
        return f"HTTP {response.status_code}, expected {status}: {response.text}"
    if status == 400:
        return None if outcome in response.json()["error"] else response.text
    if response.json()["outcome"] != outcome:
        return f"outcome {response.json()['outcome']}, expected {outcome}"
    if outcome != "accepted":
        await harness.settle()
        return None if harness.runs == [] else f"published {harness.runs}"
    entry = await harness.settled(delivery, kind)
    if entry.state is not InboxState.DONE:
        return f"inbox {entry}"
    await harness.wait_for(lambda: bool(harness.runs))
    await harness.settle()
    [run] = harness.runs
    payload = json.loads(body)
    assert run.request_id == delivery
    assert run.repo.forge == kind
    assert run.repo.full_name == payload["repository"]["full_name"]
    if event_of(path) == "push":
        assert run.event is EventKind.PUSH and run.commit_sha == payload["after"]
        assert run.branch == payload["ref"].removeprefix("refs/heads/") and run.trusted
    else:
        pr = payload["pull_request"]
        assert run.event is EventKind.PULL_REQUEST and run.commit_sha == pr["head"]["sha"]
        assert run.pull_request == payload["number"] and run.base_branch == pr["base"]["ref"]
        assert run.ref == f"refs/pull/{payload['number']}/head"
    return None


# One test per forge over all its bodies: a fresh database per body would cost a second each.
@pytest.mark.parametrize("kind", FORGES)
async def test_signed_fixtures_get_their_documented_outcome(harness: Harness, kind: str) -> None:
    problems = {path.stem: await check_outcome(harness, kind, path) for path in fixture_bodies(kind)}
    assert {name: p for name, p in problems.items() if p} == {}


@pytest.mark.parametrize("kind", FORGES)
async def test_wrong_or_missing_signature_is_refused(harness: Harness, kind: str) -> None:
    for path in fixture_bodies(kind):
        body = path.read_bytes()
        wrong = await harness.post(body, event_of(path), forge=kind, secret="not-the-secret")
        missing = await harness.post(body, event_of(path), forge=kind, secret=None)
        assert (path.stem, wrong.status_code, missing.status_code) == (path.stem, 401, 401)
    await harness.settle()
    assert harness.runs == []
    assert await harness.pool.fetchval("SELECT count(*) FROM forge_inbox") == 0
