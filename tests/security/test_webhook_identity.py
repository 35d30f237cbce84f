"""The webhook edge under attack, as the forges (and an attacker) send webhooks.

Real bodies from tests/fixtures (variants built here), the real Starlette apps served by
uvicorn (or httpx's ASGI transport where no socket matters), real PostgreSQL and RabbitMQ;
only the forge APIs are fakes. Covered:
- one repository identity decides the secret and the run's repository: a body naming its
  repository two ways, or signed with another repository's (or the global) secret, starts
  nothing; a GitHub body naming an installation without access to its repository starts
  nothing and obtains no token reaching that repository;
- the signature is checked on the raw bytes first: unsigned deep or huge bodies get 401
  without being parsed;
- signed but hostile bodies (deep nesting, a 5,000-digit number, a lone surrogate) get 400
  with the reason, too large bodies 413, too slow ones 408, with no traceback logged.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

import forge_integration.webhook
import github_integration.webhook
from common.broker.amqp import AmqpBroker
from common.forge.inbox import InboxState
from common.forge.migrate import open_pool
from common.forge.signature import GITHUB_PREFIX, sign
from common.forge.webhook import webhook_app
from common.http import running
from forge_integration.config import RepoSettings
from tests.fakes.forgejo_api import FakeForgejo
from tests.fakes.github_api import FakeGitHub
from tests.fixtures import FIXTURES
from tests.forge.conftest import SECRET, WORKFLOW, Harness, add_fixture_repos, make_config, service_with
from tests.github.test_webhooks import SECRET as GITHUB_SECRET
from tests.github.test_webhooks import Stack, running_stack

VICTIM_SECRET = "secret of gordon/hello-world"
ATTACKER_SECRET = "secret of mallory/tools"
ATTACKER_SHA = "a" * 40  # a commit of the attacker's choosing, with a workflow of theirs
EVIL = 'workflow name="ci" { job id="x" runs_on="local" { secrets "DEPLOY_KEY"; step name="x" run="steal" } }'
FORGEJO_PUSH = json.loads((FIXTURES / "forgejo" / "HookPush.json").read_text())
GITEA_PUSH = json.loads((FIXTURES / "gitea" / "HookPush.json").read_text())
GITHUB_PUSH = json.loads((FIXTURES / "github" / "push" / "with-new-branch.payload.json").read_text())
DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE = 24 * 1024 * 1024


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate stays a \\ud800 escape


def with_repository(body: dict[str, Any], *, full_name: str | None = None,
                    owner: str | None = None, name: str | None = None) -> dict[str, Any]:
    """`body` with some of its repository's names replaced."""
    body = copy.deepcopy(body)
    repository = body["repository"]
    if full_name is not None:
        repository["full_name"] = full_name
    if owner is not None:
        repository["owner"]["login"] = owner
    if name is not None:
        repository["name"] = name
    return body


def hostile(body: dict[str, Any]) -> dict[str, bytes]:
    """Validly shaped bodies a parser or an encoder cannot take, keyed by what is wrong."""
    huge_number = raw(body)[:-1] + b', "total": ' + b"7" * 5000 + b"}"
    surrogate = raw({**body, "ref": "refs/heads/\ud800"})
    return {"nests": DEEP, "4300 digits": huge_number, "surrogate": surrogate}


class ParseSpy:
    """Counts calls of an app's `parse_json` (the real one still answers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
        self.calls = 0
        real = module.parse_json

        def spy(body: bytes) -> Any:
            self.calls += 1
            return real(body)

        monkeypatch.setattr(module, "parse_json", spy)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def raw_post(url: str, path: str, headers: dict[str, str], sent: bytes, *,
                   hang_up: bool = False) -> bytes:
    """POST over a bare socket: the request line, `headers`, then `sent` (which may fall short
    of the Content-Length the headers declare); the status line answered, or b"" when
    `hang_up` (the client closes the connection instead of waiting)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode() + sent)
    await writer.drain()
    try:
        if hang_up:
            return b""
        status = await asyncio.wait_for(reader.readline(), 10)
        await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
        return status
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# ---- Forgejo / Gitea ---------------------------------------------------------------------------

@pytest.fixture
async def forge() -> AsyncIterator[FakeForgejo]:
    async with FakeForgejo() as fake:
        add_fixture_repos(fake)
        fake.add_repo("mallory", "tools", repo_id=666, branches={"main": "1" * 40})
        for repo in fake.repos.values():
            repo.files[(ATTACKER_SHA, ".solstice/workflow.kdl")] = EVIL
        yield fake


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(pg_dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def broker(amqp_url: str, broker_prefix: str) -> AsyncIterator[AmqpBroker]:
    async with AmqpBroker(amqp_url, broker_prefix) as broker:
        yield broker


@pytest.fixture
def service(forge: FakeForgejo, pool: asyncpg.Pool, broker: AmqpBroker
            ) -> Callable[..., contextlib.AbstractAsyncContextManager[Harness]]:
    """The forge integration with per-repository secrets for the victim and the attacker
    (and the global SECRET for the others), plus `overrides` of its config."""
    def build(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Harness]:
        config = make_config(forge, repos={
            "gordon/hello-world": RepoSettings(webhook_secret=SecretStr(VICTIM_SECRET)),
            "mallory/tools": RepoSettings(webhook_secret=SecretStr(ATTACKER_SECRET))}, **overrides)
        return service_with(config, forge, pool, broker)
    return build


async def no_run(harness: Harness) -> None:
    await asyncio.sleep(0.3)  # a confirmed publish reaches the consumer well within this
    assert harness.runs == []


@pytest.mark.parametrize(("kind", "fixture"), [("forgejo", FORGEJO_PUSH), ("gitea", GITEA_PUSH)])
async def test_a_repository_secret_starts_runs_of_that_repository_only(
        service: Callable[..., Any], kind: str, fixture: dict[str, Any]) -> None:
    attack = {**fixture, "after": ATTACKER_SHA}
    async with service() as harness:
        # The observed attack: signed with B's secret, full_name B, owner/name A.
        confused = with_repository(attack, full_name="mallory/tools")
        answer = await harness.post(raw(confused), "push", forge=kind, secret=ATTACKER_SECRET)
        assert answer.status_code == 400, answer.text
        assert "disagrees" in answer.json()["error"] and "gordon/hello-world" in answer.json()["error"]
        # The mirror image, signed with A's own secret, is refused just the same.
        mirrored = with_repository(attack, owner="mallory", name="tools")
        answer = await harness.post(raw(mirrored), "push", forge=kind, secret=VICTIM_SECRET)
        assert answer.status_code == 400 and "disagrees" in answer.json()["error"]
        # Naming A consistently needs A's secret: B's and the global one are refused.
        for secret in (ATTACKER_SECRET, SECRET):
            answer = await harness.post(raw(attack), "push", forge=kind, secret=secret)
            assert answer.status_code == 401, answer.text
            assert "gordon/hello-world" in answer.json()["error"]
        await no_run(harness)
        assert harness.forge.requests == []  # not even the attacker's workflow was fetched
        # The forge's own delivery, signed with A's secret, runs A trusted.
        answer = await harness.post(raw(fixture), "push", forge=kind, secret=VICTIM_SECRET)
        assert answer.status_code == 202, answer.text
        await harness.wait_for(lambda: len(harness.runs) == 1)
        [run] = harness.runs
        assert run.repo.full_name == "gordon/hello-world" and run.workflow_source == WORKFLOW
        assert run.trusted


@pytest.mark.parametrize("kind", ["forgejo", "gitea"])
async def test_unsigned_deep_or_huge_bodies_get_401_unparsed(
        service: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    parsed = ParseSpy(monkeypatch, forge_integration.webhook)
    async with service() as harness:
        for body in (DEEP, b"[" * (HUGE // 2) + b"]" * (HUGE // 2)):
            for signature in (None, "0" * 64):  # absent, or made up
                answer = await harness.post(body, "push", forge=kind, secret=None,
                                            signature=signature)
                assert answer.status_code == 401, answer.text
    assert parsed.calls == 0


@pytest.mark.parametrize("kind", ["forgejo", "gitea"])
async def test_signed_hostile_bodies_get_400_with_the_reason(
        service: Callable[..., Any], kind: str, caplog: pytest.LogCaptureFixture) -> None:
    async with service() as harness:
        for reason, body in hostile(FORGEJO_PUSH).items():
            delivery = f"hostile {reason}"
            answer = await harness.post(body, "push", forge=kind, secret=VICTIM_SECRET,
                                        delivery=delivery)
            assert answer.status_code == 400, (reason, answer.text)
            assert reason in answer.json()["error"]
            # Stored as rejected, with the reason: a redelivery is a duplicate, never a retry.
            entry = await harness.entry(delivery, kind)
            assert entry.state is InboxState.REJECTED and reason in entry.outcome, entry
            again = await harness.post(body, "push", forge=kind, secret=VICTIM_SECRET,
                                       delivery=delivery)
            assert again.status_code == 400
        await no_run(harness)
    assert tracebacks(caplog) == []


async def test_oversized_bodies_get_413_before_they_are_read(
        service: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = ParseSpy(monkeypatch, forge_integration.webhook)
    body = raw(FORGEJO_PUSH).ljust(8192)
    async with service(max_body_bytes=4096) as harness:
        declared = await harness.post(body, "push", secret=VICTIM_SECRET)
        assert declared.status_code == 413 and "4096-byte limit" in declared.json()["error"]

        # No Content-Length: the body is counted as it streams in (chunked), and refused once
        # past the limit, before its end arrived.
        chunked = b"".join(b"%x\r\n%s\r\n" % (1024, body[i:i + 1024]) for i in range(0, 5120, 1024))
        status = await raw_post(str(harness.http.base_url), "/webhooks/forgejo", {
            "Transfer-Encoding": "chunked", "X-Forgejo-Event": "push",
            "X-Forgejo-Delivery": str(uuid.uuid4()),
            "X-Forgejo-Signature": sign(VICTIM_SECRET, body)}, chunked)
        assert status.startswith(b"HTTP/1.1 413"), status
        fits = await harness.post(raw(FORGEJO_PUSH), "push", secret=VICTIM_SECRET)
        assert fits.status_code == 202, fits.text
    assert parsed.calls == 1


async def test_slow_bodies_get_408_and_hang_ups_log_no_traceback(
        service: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    body = raw(FORGEJO_PUSH)
    headers = {"Content-Length": str(len(body)), "X-Forgejo-Event": "push",
               "X-Forgejo-Delivery": "slow", "X-Forgejo-Signature": sign(VICTIM_SECRET, body)}
    async with service(body_timeout=0.5) as harness:
        url = str(harness.http.base_url)
        started = time.perf_counter()
        status = await raw_post(url, "/webhooks/forgejo", headers, body[:100])
        elapsed = time.perf_counter() - started
        assert status.startswith(b"HTTP/1.1 408"), status
        assert 0.5 <= elapsed < 5, elapsed
        await raw_post(url, "/webhooks/forgejo", headers, body[:100], hang_up=True)
        await asyncio.sleep(0.3)  # the server sees the hang-up
        assert (await harness.http.get("/healthz")).status_code == 200
        await no_run(harness)
    assert tracebacks(caplog) == []


# ---- GitHub --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def github(app_key: rsa.RSAPrivateKey) -> AsyncIterator[FakeGitHub]:
    """Codertocat/Hello-World in installation 1; mallory's account (installation 99) has a
    repository of the same name, installation 98 one of another name."""
    async with FakeGitHub(1, app_key.public_key()) as fake:
        files = {(GITHUB_PUSH["after"], ".solstice/workflow.kdl"): WORKFLOW,
                 (ATTACKER_SHA, ".solstice/workflow.kdl"): EVIL}
        fake.add_repo("Codertocat", "Hello-World", installation_ids={1}, files=files,
                      permissions={"Codertocat": "admin"})
        fake.add_repo("mallory", "Hello-World", installation_ids={99}, files=files)
        fake.add_repo("mallory", "tools", installation_ids={98}, files=files)
        yield fake


@pytest.fixture
def github_stack(pg_dsn: str, github: FakeGitHub, app_key: rsa.RSAPrivateKey, amqp_url: str,
                 broker_prefix: str) -> Callable[..., contextlib.AbstractAsyncContextManager[Stack]]:
    @contextlib.asynccontextmanager
    async def build(**settings: Any) -> AsyncIterator[Stack]:
        async with AmqpBroker(amqp_url, broker_prefix) as broker, \
                running_stack(pg_dsn, github, app_key, broker, **settings) as stack:
            yield stack
    return build


def github_sign(body: bytes) -> str:
    return sign(GITHUB_SECRET, body, prefix=GITHUB_PREFIX)


async def test_github_installation_must_cover_the_repository(
        github_stack: Callable[..., Any], github: FakeGitHub) -> None:
    attack = {**GITHUB_PUSH, "after": ATTACKER_SHA}
    async with github_stack() as stack:
        for installation in (99, 98, 12345):  # same-named repository elsewhere, other, none
            delivery = f"installation-{installation}"
            answer = await stack.post("push", {**attack, "installation": {"id": installation}},
                                      delivery=delivery)
            assert answer.status_code == 202, answer.text  # GitHub is asked by the inbox worker
            entry = await stack.settled(delivery)
            assert entry.state is InboxState.PARKED and entry.attempts == 1, entry
        confused = with_repository(attack, full_name="mallory/tools")
        answer = await stack.post("push", confused)
        assert answer.status_code == 400 and "disagrees" in answer.json()["error"]
        assert await stack.published(1) == []
        assert github.tokens_for("Codertocat", "Hello-World") == []
        assert not [path for _, path in github.requests if "/repos/Codertocat/" in path]
        # GitHub's own delivery runs, with a token that reaches its repository only.
        answer = await stack.post("push", GITHUB_PUSH)
        assert answer.status_code == 202, answer.text
        [run] = await stack.published(1)
        assert run.repo.full_name == "Codertocat/Hello-World" and run.repo.installation_id == 1
        [token] = github.tokens_for("Codertocat", "Hello-World")
        assert github.tokens[token].repositories == {"codertocat/hello-world"}


async def test_github_unsigned_bodies_get_401_unparsed_and_signed_hostile_ones_400(
        github_stack: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    parsed = ParseSpy(monkeypatch, github_integration.webhook)
    async with github_stack() as stack:
        for body in (DEEP, b"[" * (HUGE // 2) + b"]" * (HUGE // 2)):
            answer = await stack.post("push", body, signature="sha256=" + "0" * 64)
            assert answer.status_code == 401, answer.text
        assert parsed.calls == 0
        for reason, body in hostile(GITHUB_PUSH).items():
            delivery = f"hostile {reason}"
            answer = await stack.post("push", body, signature=github_sign(body), delivery=delivery)
            assert answer.status_code == 400, (reason, answer.text)
            assert reason in answer.json()["error"]
            entry = await stack.entry(delivery)
            assert entry.state is InboxState.REJECTED and reason in entry.outcome, entry
        assert await stack.published(1) == []
    assert tracebacks(caplog) == []


async def test_github_body_limits(github_stack: Callable[..., Any],
                                  caplog: pytest.LogCaptureFixture) -> None:
    body = raw(GITHUB_PUSH)
    async with github_stack(max_body_bytes=4096, body_timeout=0.5) as stack:
        answer = await stack.post("push", body)
        assert answer.status_code == 413, answer.text
        async with running(webhook_app(stack.service.routes())) as url:
            headers = {"Content-Length": "4000", "X-GitHub-Event": "push",
                       "X-GitHub-Delivery": "slow", "X-Hub-Signature-256": github_sign(body[:4000])}
            status = await raw_post(url, "/webhooks/github", headers, body[:100])
            assert status.startswith(b"HTTP/1.1 408"), status
            await raw_post(url, "/webhooks/github", headers, body[:100], hang_up=True)
            await asyncio.sleep(0.3)
        assert await stack.published(1) == []
    assert tracebacks(caplog) == []
