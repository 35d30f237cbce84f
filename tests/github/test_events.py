"""Webhook classification details the fixture sweep does not pin down."""
from __future__ import annotations

import json
import uuid

import pytest

from common.forge.errors import WebhookRejected
from common.forge.identity import repository_identity
from common.forge.policy import RunCandidate
from common.messages import EventKind
from github_integration.events import Ignored, JobRerun, Outcome, parse_external_id
from github_integration.events import classify as classify_with
from tests.fixtures import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "github"
API = "https://api.github.example"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def classify(event: str, body: object, delivery: str, *, api_url: str) -> Outcome:
    """As the webhook handler calls it: with the identity taken from the same body."""
    return classify_with(event, body, delivery, identity=repository_identity(body), api_url=api_url)


def test_pull_request_from_a_deleted_fork_is_a_fork() -> None:
    body = load("pull_request/synchronize.payload.json")
    body["pull_request"]["head"]["repo"] = None
    candidate = classify("pull_request", body, "d", api_url=API)
    assert isinstance(candidate, RunCandidate) and candidate.fork


def test_same_repository_pull_request_is_not_a_fork() -> None:
    candidate = classify("pull_request", load("pull_request/opened.payload.json"), "d", api_url=API)
    assert isinstance(candidate, RunCandidate)
    assert not candidate.fork and candidate.author == "Codertocat"
    assert candidate.repo.api_url == API and candidate.repo.installation_id == 1


def test_tag_push_is_a_tag_event() -> None:
    body = load("push/with-installation.payload.json")
    body |= {"after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "deleted": False}
    candidate = classify("push", body, "d", api_url=API)
    assert isinstance(candidate, RunCandidate)
    assert (candidate.event, candidate.tag, candidate.branch) == (EventKind.TAG, "simple-tag", None)


def test_push_and_its_check_suite_share_the_run_key() -> None:
    push = load("push/with-new-branch.payload.json")
    suite = load("check_suite/requested.payload.json")
    suite["check_suite"]["head_sha"] = push["after"]
    a = classify("push", push, "delivery-a", api_url=API)
    b = classify("check_suite", suite, "delivery-b", api_url=API)
    assert isinstance(a, RunCandidate) and isinstance(b, RunCandidate)
    assert a.request_id == b.request_id
    again = classify("check_suite", load("check_suite/rerequested.payload.json"), "delivery-c",
                     api_url=API)
    assert isinstance(again, RunCandidate) and again.request_id == "delivery-c"  # a new run


def test_check_suite_without_a_branch_is_ignored() -> None:
    body = load("check_suite/requested.payload.json")
    body["check_suite"]["head_branch"] = None
    assert isinstance(classify("check_suite", body, "d", api_url=API), Ignored)


def test_push_to_another_kind_of_ref_is_ignored() -> None:
    body = load("push/with-new-branch.payload.json") | {"ref": "refs/notes/commits"}
    assert isinstance(classify("push", body, "d", api_url=API), Ignored)


@pytest.mark.parametrize("value, expected", [
    (f"{uuid.UUID(int=5)}/build[os=omnios]", (uuid.UUID(int=5), "build[os=omnios]")),
    ("", None), (None, None), ("not-a-uuid/build", None), (f"{uuid.UUID(int=5)}/", None),
    ("ci-42", None),
])
def test_external_id(value, expected) -> None:
    assert parse_external_id(value) == expected


def test_check_run_rerequested_carries_the_job() -> None:
    body = load("check_run/rerequested.payload.json")
    body["check_run"]["external_id"] = f"{uuid.UUID(int=9)}/lint"
    rerun = classify("check_run", body, "d", api_url=API)
    assert isinstance(rerun, JobRerun)
    assert (rerun.run_id, rerun.job_key, rerun.commit_sha) == (
        uuid.UUID(int=9), "lint", body["check_run"]["head_sha"])


@pytest.mark.parametrize("event, body", [("push", []), ("push", "x"), ("pull_request", None)])
def test_non_object_bodies_are_rejected(event, body) -> None:
    with pytest.raises(WebhookRejected) as caught:
        classify(event, body, "d", api_url=API)
    assert caught.value.status == 400
