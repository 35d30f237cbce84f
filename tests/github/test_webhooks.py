"""`POST /webhooks/github` with every octokit fixture body, signed right and wrong, and the
answers that depend on GitHub, the broker and the fork policy."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from common.broker import Broker
from common.broker.memory import MemoryBroker
from common.forge.config import InboxSettings
from common.forge.inbox import InboxEntry, InboxState
from common.forge.inbox_api import PATH as INBOX_PATH
from common.forge.inbox_api import retry_path
from common.forge.signature import verify_github
from common.messages import EventKind, RunApproval, RunRequest, decode_run_queue
from common.retry import Backoff
from github_integration.api import make_http_client
from github_integration.config import GitHubIntegrationConfig, RepoSettings
from github_integration.db import open_database
from github_integration.service import GitHubIntegration
from tests.fakes.github_api import FakeGitHub
from tests.fixtures import FIXTURES as ALL_FIXTURES
from tests.github.conftest import INSTALLATION

FIXTURES = ALL_FIXTURES / "github"
SECRET = "webhook secret for tests"
OWNER, REPO = "Codertocat", "Hello-World"
WORKFLOW = """workflow name="ci" {
    job id="build" runs_on="illumos" {
        step name="Build" run="make"
    }
}
"""
BASE_WORKFLOW = WORKFLOW.replace('run="make"', 'run="make base"')
FAST_INBOX = InboxSettings(retry_initial=0.01, retry_max=0.05, poll_interval=0.05)
FIXTURE_SHAS = ("f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "6113728f27ae82c7b1a177c8d03f9e96e0adf246")

PUBLISHED = {
    "push/with-new-branch.payload.json", "push/with-no-username-committer.payload.json",
    "pull_request/opened.payload.json", "pull_request/opened.with-null-body.json",
    "pull_request/opened.with-organization.payload.json", "pull_request/reopened.payload.json",
    "pull_request/reopened.with-organization.payload.json",
    "pull_request/synchronize.payload.json",
    "check_suite/requested.payload.json",
    "check_suite/requested.payload.with-email-with-special-characters.json",
    "check_suite/requested.with-organization.payload.json",
    "check_suite/rerequested.payload.json", "check_suite/rerequested.with-organization.payload.json",
}
REJECTED = {f"{event}/{name}" for event, names in {
    "create": ("payload.json", "with-description.payload.json", "with-installation.payload.json",
               "with-organization.payload.json"),
    "delete": ("payload.json", "with-installation.payload.json", "with-organization.payload.json"),
}.items() for name in names}
# issue_comment bodies are read for `/solstice approve` (github_integration/approval.py); the
# fixtures' comments hold no command, so they are ignored (200).


def fixture_files() -> list[str]:
    return sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.json"))


def expected_status(name: str) -> int:
    return 202 if name in PUBLISHED else 400 if name in REJECTED else 200


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Stack:
    client: httpx.AsyncClient
    fake: FakeGitHub
    broker: Broker
    service: GitHubIntegration
    runs: list[RunRequest | RunApproval]

    async def post(self, event: str, body: bytes | dict, *, delivery: str | None = None,
                   signature: str | None = None) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                   "X-Hub-Signature-256": signature or sign(raw),
                   "Content-Type": "application/json"}
        return await self.client.post("/webhooks/github", content=raw, headers=headers)

    async def entry(self, delivery: str) -> InboxEntry:
        """The inbox entry of `delivery`, which must have been stored."""
        entry = await self.service.inbox.find("github", delivery)
        assert entry is not None, f"delivery {delivery} was not stored"
        return entry

    async def settled(self, delivery: str, timeout: float = 5.0) -> InboxEntry:
        """The inbox entry of `delivery` once the worker is done with it (not pending)."""
        async with asyncio.timeout(timeout):
            while True:
                entry = await self.service.inbox.find("github", delivery)
                if entry is not None and entry.state is not InboxState.PENDING:
                    return entry
                await asyncio.sleep(0.02)

    async def published(self, count: int) -> list[RunRequest]:
        """The run requests consumed, once `count` arrived (or 2 s passed); a confirmed
        publish reaches the in-process consumer within milliseconds, so anything beyond
        `count` shows up in the short settle time."""
        for _ in range(200):
            if len(self.runs) >= count:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return self.runs


@contextlib.asynccontextmanager
async def running_stack(pg_dsn: str, fake: FakeGitHub, app_key, broker: Broker, *,
                        collect_runs: bool = True, **settings) -> AsyncIterator[Stack]:
    """The integration on `broker`, talking to `fake`, with a consumer collecting run requests
    (unless `collect_runs` is False)."""
    pool = await open_database(pg_dsn, min_size=1, max_size=4)
    settings.setdefault("inbox", FAST_INBOX)
    config = GitHubIntegrationConfig(app_id=1, private_key_path=Path("unused.pem"),
                                     webhook_secret=SECRET, api_url=fake.url,
                                     events_queue=f"github-{uuid.uuid4().hex[:8]}", **settings)
    http = make_http_client(fake.url, timeout=2.0)
    service = GitHubIntegration(config, pool, broker, http, app_key,
                                outbox_backoff=Backoff(initial=0.01, maximum=0.05),
                                outbox_poll=0.05)
    runs: list[RunRequest | RunApproval] = []

    async def collect(delivery) -> None:
        runs.append(decode_run_queue(delivery.body))
        await delivery.ack()

    if collect_runs:
        await broker.consume_runs(collect)
    await service.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app()),
                               base_url="http://test")
    try:
        yield Stack(client, fake, broker, service, runs)
    finally:
        await client.aclose()
        await service.stop()
        await http.aclose()
        await pool.close()


@pytest.fixture
async def fake(app_key) -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub(1, app_key.public_key()) as gh:
        files = {(sha, ".solstice/workflow.kdl"): WORKFLOW for sha in FIXTURE_SHAS}
        files[("master", ".solstice/workflow.kdl")] = BASE_WORKFLOW
        gh.add_repo(OWNER, REPO, installation_ids={1, 957387, INSTALLATION}, files=files,
                    permissions={"Codertocat": "admin", "octocoders-linter[bot]": "write"})
        yield gh


@pytest.fixture
async def stack(pg_dsn: str, fake: FakeGitHub, app_key) -> AsyncIterator[Stack]:
    async with MemoryBroker(f"gh-{uuid.uuid4().hex[:8]}") as broker, \
            running_stack(pg_dsn, fake, app_key, broker) as built:
        yield built


async def until(condition, timeout: float = 5.0) -> None:
    """Wait for `condition()` to hold (the outbox worker runs in the background)."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# ---- signatures -----------------------------------------------------------------------------

def test_githubs_documented_signature_vector() -> None:
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    secret = "It's a Secret to Everybody"
    assert verify_github(secret, b"Hello, World!", header)
    assert not verify_github(secret, b"Hello, World?", header)
    assert not verify_github(secret, b"Hello, World!", header[7:])  # the bare digest
    assert not verify_github(secret, b"Hello, World!", None)


# ---- every fixture ---------------------------------------------------------------------------

async def test_every_fixture_gets_its_documented_outcome(stack: Stack) -> None:
    names = fixture_files()
    assert len(names) == 71
    for name in names:
        raw = (FIXTURES / name).read_bytes()
        response = await stack.post(name.split("/")[0], raw)
        assert response.status_code == expected_status(name), (name, response.text)
        answer = response.json()
        assert answer["error"] if response.status_code == 400 else answer["outcome"], name
    runs = await stack.published(len(PUBLISHED))
    assert len(runs) == len(PUBLISHED)
    push = next(r for r in runs if r.event is EventKind.PUSH and r.commit_sha == FIXTURE_SHAS[2])
    assert push.branch == "master" and push.trusted and push.workflow_source == WORKFLOW
    assert push.repo.installation_id == 1 and push.repo.forge == "github"
    pr = next(r for r in runs if r.event is EventKind.PULL_REQUEST)
    assert (pr.pull_request, pr.ref, pr.base_branch) == (2, "refs/pull/2/head", "master")
    assert pr.trusted and pr.priority < push.priority
    suites = {r.request_id for r in runs if r.commit_sha == FIXTURE_SHAS[0]}
    assert len(suites) == 1  # the three `requested` suites are one commit on one ref: one key


async def test_every_fixture_with_a_wrong_signature_gets_401(stack: Stack) -> None:
    for name in fixture_files():
        raw = (FIXTURES / name).read_bytes()
        response = await stack.post(name.split("/")[0], raw, signature=sign(raw, "wrong"))
        assert response.status_code == 401, name
        missing = await stack.client.post("/webhooks/github", content=raw, headers={
            "X-GitHub-Event": name.split("/")[0], "X-GitHub-Delivery": "x"})
        assert missing.status_code == 401, name
    assert await stack.published(0) == []
    # Nothing was even looked up (the redelivery recovery lists the App's deliveries).
    assert [r for r in stack.fake.requests if not r[1].startswith("/app/hook/")] == []


# ---- bad input ---------------------------------------------------------------------------------

async def test_bad_requests_get_400_with_a_reason(stack: Stack) -> None:
    for event, body in [("push", b"{not json"), ("push", b"[1, 2]"), ("gollum", b"{}"),
                        ("push", b'{"ref": "refs/heads/x"}')]:
        response = await stack.post(event, body)
        assert response.status_code == 400, (event, body)
        assert response.json()["error"]
    raw = b"{}"
    no_event = await stack.client.post("/webhooks/github", content=raw,
                                       headers={"X-Hub-Signature-256": sign(raw)})
    assert no_event.status_code == 400
    partial = await stack.post("push", b'{"ref": "refs/heads/x", "after": "abc"}')
    assert "malformed push payload: repository" in partial.json()["error"]


async def test_redelivery_publishes_nothing_new(stack: Stack) -> None:
    raw = (FIXTURES / "pull_request/opened.payload.json").read_bytes()
    first = await stack.post("pull_request", raw, delivery="d-1")
    again = await stack.post("pull_request", raw, delivery="d-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["outcome"] == "duplicate"
    assert len(await stack.published(1)) == 1


# ---- GitHub and broker failures ---------------------------------------------------------------

async def test_github_down_is_retried_then_published(stack: Stack) -> None:
    raw = (FIXTURES / "pull_request/synchronize.payload.json").read_bytes()
    stack.fake.fail(2, status=500, path_contains="/contents/")
    assert (await stack.post("pull_request", raw, delivery="d-2")).status_code == 202
    entry = await stack.settled("d-2")
    assert entry.state is InboxState.DONE and entry.attempts == 3, entry
    assert "HTTP 500" in entry.last_error  # what failed before stays on record
    assert len(await stack.published(1)) == 1


async def test_github_failing_for_good_parks_the_delivery(pg_dsn: str, fake: FakeGitHub,
                                                          app_key) -> None:
    raw = (FIXTURES / "pull_request/synchronize.payload.json").read_bytes()
    fake.fail(100, status=502, path_contains="/contents/")
    inbox = InboxSettings(max_attempts=3, retry_initial=0.01, retry_max=0.02, poll_interval=0.05)
    bearer = {"Authorization": "Bearer internal-token-0123456789"}
    async with MemoryBroker(f"gh-{uuid.uuid4().hex[:8]}") as broker, \
            running_stack(pg_dsn, fake, app_key, broker, inbox=inbox,
                          internal_token=SecretStr(bearer["Authorization"][7:])) as built:
        assert (await built.post("pull_request", raw, delivery="d-park")).status_code == 202
        entry = await built.settled("d-park")
        assert (entry.state, entry.attempts) == (InboxState.PARKED, 3), entry
        assert "HTTP 502" in entry.last_error
        assert await built.published(0) == []
        # What `ciadm inbox` reaches through an orchestrator (tests/ciadm/test_inbox.py).
        listing = (await built.client.get(INBOX_PATH, headers=bearer)).json()
        assert listing["forges"] == ["github"] and listing["counts"]["parked"] == 1
        assert [e["delivery_id"] for e in listing["entries"]] == ["d-park"]
        fake.heal()
        retried = await built.client.post(retry_path(entry.id), headers=bearer,
                                          params={"forge": "github"})
        assert retried.status_code == 200, retried.text
        assert (await built.settled("d-park")).state is InboxState.DONE
        assert len(await built.published(1)) == 1


async def test_unconfirmed_publish_is_retried_until_the_broker_confirms(
        pg_dsn: str, fake: FakeGitHub, app_key, amqp_url: str, broker_prefix: str) -> None:
    import aio_pika

    from common.broker.amqp import AmqpBroker

    try:
        async with AmqpBroker(amqp_url, broker_prefix) as broker, \
                running_stack(pg_dsn, fake, app_key, broker, collect_runs=False,
                              inbox=FAST_INBOX.model_copy(update={"max_attempts": 1000})) as built:
            async with await aio_pika.connect(amqp_url) as connection:
                channel = await connection.channel()
                await channel.queue_delete(f"{broker_prefix}.runs")  # the publish is unroutable
            raw = (FIXTURES / "push/with-new-branch.payload.json").read_bytes()
            assert (await built.post("push", raw, delivery="d-3")).status_code == 202
            async with asyncio.timeout(5):
                while "BrokerError" not in (await built.entry("d-3")).last_error:
                    await asyncio.sleep(0.02)
            async with AmqpBroker(amqp_url, broker_prefix):
                pass  # connecting declares the topology again
            entry = await built.settled("d-3")
            assert entry.state is InboxState.DONE and entry.attempts >= 2, entry
    finally:
        async with await aio_pika.connect(amqp_url) as connection:
            channel = await connection.channel()
            for queue in ("runs", "dead"):
                await channel.queue_delete(f"{broker_prefix}.{queue}")


# ---- fork policy, triggers, re-runs, invalid workflows ------------------------------------------

async def test_fork_pull_request_is_untrusted_with_the_base_workflow(stack: Stack) -> None:
    body = load("pull_request/opened.payload.json")
    body["pull_request"]["head"]["repo"]["id"] = 999
    body["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
    assert (await stack.post("pull_request", body)).status_code == 202
    [run] = await stack.published(1)
    assert not run.trusted and run.workflow_source == BASE_WORKFLOW
    assert run.commit_sha == FIXTURE_SHAS[1]  # the PR's code is still what gets built
    assert run.sender == body["sender"]["login"]  # shown on the run page and in the manifest


async def test_author_without_write_access_is_untrusted(stack: Stack) -> None:
    stack.fake.repos[f"{OWNER}/{REPO}".lower()].permissions["Codertocat"] = "read"
    assert (await stack.post("pull_request", load("pull_request/opened.payload.json"))).status_code == 202
    [run] = await stack.published(1)
    assert not run.trusted and not run.needs_approval and run.workflow_source == BASE_WORKFLOW


async def test_untrusted_run_waits_for_approval_where_configured(pg_dsn, fake, app_key) -> None:
    fake.repos[f"{OWNER}/{REPO}".lower()].permissions["Codertocat"] = "none"
    repos = {f"{OWNER}/{REPO}": RepoSettings(approval_for_untrusted=True)}
    async with MemoryBroker(f"gh-{uuid.uuid4().hex[:8]}") as broker, \
            running_stack(pg_dsn, fake, app_key, broker, repos=repos) as built:
        await built.post("pull_request", load("pull_request/opened.payload.json"))
        [run] = await built.published(1)
        assert not run.trusted and run.needs_approval


async def test_workflow_triggers_filter_events(stack: Stack) -> None:
    only_main = WORKFLOW.replace('workflow name="ci" {', 'workflow name="ci" {\n    on "push" branches="main"')
    stack.fake.repos[f"{OWNER}/{REPO}".lower()].files[(FIXTURE_SHAS[2], ".solstice/workflow.kdl")] = only_main
    response = await stack.post("push", load("push/with-new-branch.payload.json"), delivery="d-on")
    assert response.status_code == 202
    entry = await stack.settled("d-on")
    assert entry.state is InboxState.IGNORED and "`on` triggers" in entry.outcome, entry
    assert await stack.published(0) == []


async def test_missing_workflow_is_ignored(stack: Stack) -> None:
    stack.fake.repos[f"{OWNER}/{REPO}".lower()].files.clear()
    await stack.post("push", load("push/with-new-branch.payload.json"), delivery="d-none")
    entry = await stack.settled("d-none")
    assert entry.state is InboxState.IGNORED and "no .solstice/workflow.kdl" in entry.outcome


async def test_invalid_workflow_becomes_a_failed_check_run(stack: Stack) -> None:
    stack.fake.repos[f"{OWNER}/{REPO}".lower()].files[(FIXTURE_SHAS[2], ".solstice/workflow.kdl")] = (
        'workflow name="ci" {\n    job id="build" {\n    }\n}\n')
    delivery = str(uuid.uuid4())
    response = await stack.post("push", load("push/with-new-branch.payload.json"), delivery=delivery)
    assert response.status_code == 202
    entry = await stack.settled(delivery)
    assert entry.state is InboxState.IGNORED and "invalid" in entry.outcome
    await until(lambda: stack.fake.check_runs)
    [check] = stack.fake.check_runs.values()
    assert check.name == "solstice/workflow" and check.conclusion == "failure"
    assert check.head_sha == FIXTURE_SHAS[2] and ".solstice/workflow.kdl" in check.output["summary"]
    assert check.annotations and check.annotations[0]["path"] == ".solstice/workflow.kdl"
    await stack.post("push", load("push/with-new-branch.payload.json"), delivery=delivery)
    await stack.post("push", load("push/with-new-branch.payload.json"))  # a new delivery
    await asyncio.sleep(0.3)
    assert len(stack.fake.check_runs) == 1  # one failed check run per commit
    assert await stack.published(0) == []


async def test_check_run_rerequested_reruns_the_job(stack: Stack) -> None:
    body = load("check_run/rerequested.payload.json")
    run_id = uuid.uuid4()
    body["check_run"]["external_id"] = f"{run_id}/build"
    body["repository"] = load("push/with-new-branch.payload.json")["repository"]
    body["installation"] = {"id": INSTALLATION}
    assert (await stack.post("check_run", body)).status_code == 202
    [run] = await stack.published(1)
    assert run.rerun_of is not None and run.rerun_of.run_id == run_id
    assert run.rerun_of.job_key == "build" and not run.trusted
    assert run.workflow_source == BASE_WORKFLOW  # never the workflow of unknown provenance


async def test_push_without_installation_looks_it_up(stack: Stack) -> None:
    body = load("push/payload.json")
    body |= {"ref": "refs/heads/master", "after": FIXTURE_SHAS[2], "deleted": False}
    assert "installation" not in body
    assert (await stack.post("push", body)).status_code == 202
    [run] = await stack.published(1)
    assert run.repo.installation_id == 1


async def test_app_not_installed_is_rejected(stack: Stack) -> None:
    body = load("push/payload.json")
    body |= {"ref": "refs/heads/master", "after": FIXTURE_SHAS[2], "deleted": False}
    body["repository"] = copy.deepcopy(body["repository"]) | {"name": "Other", "full_name": "Codertocat/Other"}
    assert (await stack.post("push", body, delivery="d-other")).status_code == 202
    entry = await stack.settled("d-other")
    assert entry.state is InboxState.PARKED and "not installed" in entry.last_error, entry
    assert entry.attempts == 1  # refused for good: not retried


# ---- job events back to GitHub as check runs, through the outbox ----------------------------

def job_event(state, sequence: int, *, job_id: uuid.UUID, forge: str = "github", **fields):
    from common.messages import JobEvent, Repo

    repo = Repo(forge=forge, owner=OWNER, name=REPO, clone_url=f"https://github.com/{OWNER}/{REPO}.git",
                installation_id=1)
    return JobEvent(run_id=uuid.UUID(int=7), job_id=job_id, job_key="build", workflow_name="ci",
                    state=state, sequence=sequence, repo=repo, commit_sha=FIXTURE_SHAS[2],
                    request_id="r", log_url="https://ci.example/jobs/1", **fields)


async def test_job_events_become_check_runs_despite_github_errors(stack: Stack) -> None:
    from common.messages import JobState

    job_id = uuid.uuid4()
    stack.fake.fail(3, status=500, path_contains="/check-runs")  # refused, then retried
    for sequence, state in enumerate([JobState.QUEUED, JobState.RUNNING, JobState.FAILURE]):
        await stack.broker.publish_event(job_event(state, sequence, job_id=job_id,
                                                   failing_step="make", log_tail="a.c:1:2: boom\n"))
    await stack.broker.publish_event(job_event(JobState.SUCCESS, 0, job_id=uuid.uuid4(),
                                               forge="forgejo"))  # not ours: dropped
    for _ in range(250):  # the worker marks a row delivered just after GitHub accepted it
        if await stack.service.outbox.counts() == {"delivered": 3}:
            break
        await asyncio.sleep(0.02)
    assert await stack.service.outbox.counts() == {"delivered": 3}
    [run] = stack.fake.check_runs.values()
    assert [body.get("status") for body in run.history] == ["queued", "in_progress", "completed"]
    assert run.conclusion == "failure" and run.annotations[0]["path"] == "a.c"


async def test_installation_removed_drops_its_cached_token(stack: Stack) -> None:
    auth = stack.service.auth
    first = await auth.installation_token(1, f"{OWNER}/{REPO}")
    body = load("installation/deleted.payload.json")
    body["installation"]["id"] = 1
    response = await stack.post("installation", body)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert await auth.installation_token(1, f"{OWNER}/{REPO}") != first
    assert stack.fake.tokens_issued == 2


async def test_the_second_delivery_of_a_commit_reads_the_workflow_from_the_cache(
        stack: Stack) -> None:
    push = load("push/with-new-branch.payload.json")
    suite = load("check_suite/requested.payload.json")  # GitHub sends both for one push
    suite["check_suite"]["head_sha"] = push["after"]
    for event, body, delivery in (("push", push, "push"), ("check_suite", suite, "suite")):
        assert (await stack.post(event, body, delivery=delivery)).status_code == 202
        assert (await stack.settled(delivery)).state is InboxState.DONE
    contents = [path for _, path in stack.fake.requests if "/contents/" in path]
    assert len(contents) == 1, contents
