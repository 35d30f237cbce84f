"""A running forge integration against a fake Forgejo, real PostgreSQL and a broker."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from common.broker import Broker, Delivery, MemoryBroker
from common.forge.config import InboxSettings
from common.forge.inbox import InboxEntry, InboxState
from common.forge.migrate import open_pool
from common.forge.outbox import OutboxWorker
from common.forge.signature import sign
from common.http import running
from common.messages import RunApproval, RunRequest, decode_run_queue
from common.retry import Backoff
from forge_integration.config import ForgeIntegrationConfig, Site
from forge_integration.feedback import StatusSender
from forge_integration.main import clients_for
from forge_integration.service import ForgeIntegration
from tests.fakes.forgejo_api import FakeForgejo
from tests.fixtures import FIXTURES

SECRET = "webhook-s3cret"
WORKFLOW = 'workflow name="ci" { job id="build" runs_on="local" { step name="make" run="true" } }'
FAST = Backoff(initial=0.02, maximum=0.1)
FAST_INBOX = InboxSettings(retry_initial=0.01, retry_max=0.05, poll_interval=0.05)


def fixture_bodies(forge: str) -> list[Path]:
    return sorted((FIXTURES / forge).glob("*.json"))


@dataclass
class Harness:
    forge: FakeForgejo
    service: ForgeIntegration
    http: httpx.AsyncClient
    pool: asyncpg.Pool
    runs: list[RunRequest | RunApproval] = field(default_factory=list)

    async def post(self, body: bytes | dict[str, Any], event: str, *, forge: str = "forgejo",
                   delivery: str | None = None, secret: str | None = SECRET,
                   signature: str | None = None) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        prefix = "X-Forgejo-" if forge == "forgejo" else "X-Gitea-"
        headers = {"Content-Type": "application/json", prefix + "Event": event,
                   prefix + "Delivery": delivery or str(uuid.uuid4())}
        if signature is None and secret is not None:
            signature = sign(secret, raw)
        if signature is not None:
            headers[prefix + "Signature"] = signature
        return await self.http.post(f"/webhooks/{forge}", content=raw, headers=headers)

    async def entry(self, delivery: str, forge: str = "forgejo") -> InboxEntry:
        """The inbox entry of `delivery`, which must have been stored."""
        entry = await self.service.inbox.find(forge, delivery)
        assert entry is not None, f"delivery {delivery} was not stored"
        return entry

    async def settled(self, delivery: str, forge: str = "forgejo",
                      timeout: float = 5.0) -> InboxEntry:
        """The inbox entry of `delivery` once the worker is done with it (not pending)."""
        async with asyncio.timeout(timeout):
            while (entry := await self.entry(delivery, forge)).state is InboxState.PENDING:
                await asyncio.sleep(0.02)
        return entry

    async def settle(self) -> None:
        """Let the broker hand over what was published."""
        await asyncio.sleep(0.05)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)


def add_fixture_repos(forge: FakeForgejo, workflow: str = WORKFLOW) -> None:
    """Every repository the fixture bodies name, with the workflow at each commit they name."""
    for kind in ("forgejo", "gitea"):
        for path in fixture_bodies(kind):
            body = json.loads(path.read_text())
            repository = body.get("repository")
            if not repository:
                continue
            full = repository["full_name"].lower()
            repo = forge.repos.get(full) or forge.add_repo(
                repository["owner"]["login"], repository["name"], repo_id=repository["id"],
                default_branch=repository.get("default_branch") or "main",
                branches={"main": "1" * 40})
            shas = {body.get("after"), body.get("sha")}
            if "pull_request" in body:
                shas.add(body["pull_request"]["head"]["sha"])
                base = body["pull_request"]["base"]
                repo.branches.setdefault(base["ref"], base["sha"])
                shas.add(base["sha"])
            for sha in shas - {None}:
                repo.files[(sha, ".solstice/workflow.kdl")] = workflow
            repo.files[(repo.branches["main"], ".solstice/workflow.kdl")] = workflow


def make_config(forge: FakeForgejo, **overrides: Any) -> ForgeIntegrationConfig:
    values: dict[str, Any] = dict(
        webhook_secret=SecretStr(SECRET), manual_token=SecretStr("manual-token"),
        inbox=FAST_INBOX,
        sites={"forgejo": Site(url=forge.url, token=SecretStr(forge.token), timeout=1.0),
               "gitea": Site(url=forge.url, token=SecretStr(forge.token), timeout=1.0)})
    values.update(overrides)
    return ForgeIntegrationConfig(**values)


@asynccontextmanager
async def service_with(config: ForgeIntegrationConfig, forge: FakeForgejo, pool: asyncpg.Pool,
                       broker: Broker) -> AsyncIterator[Harness]:
    """The service with `config`, served over HTTP, with a fast-retrying outbox worker; the
    runs it publishes are collected in `Harness.runs`."""
    clients = clients_for(config)
    service = ForgeIntegration(config, pool, broker, clients)
    service.worker = OutboxWorker(service.outbox, StatusSender(clients), backoff=FAST,
                                  poll_interval=0.05, lease=3.0, send_timeout=2.0)
    runs: list[RunRequest | RunApproval] = []

    async def collect(delivery: Delivery) -> None:
        runs.append(decode_run_queue(delivery.body))
        await delivery.ack()

    subscription = await broker.consume_runs(collect)
    try:
        async with running(service.app()) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield Harness(forge, service, http, pool, runs)
    finally:
        await subscription.cancel()
        for client in clients.values():
            await client.close()


@pytest.fixture
async def forge() -> AsyncIterator[FakeForgejo]:
    async with FakeForgejo() as fake:
        add_fixture_repos(fake)
        yield fake


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(pg_dsn, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
async def broker(broker_prefix: str) -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(broker_prefix)
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture
async def harness(forge: FakeForgejo, pool: asyncpg.Pool, broker: MemoryBroker) -> AsyncIterator[Harness]:
    async with service_with(make_config(forge), forge, pool, broker) as h:
        yield h
