"""Asking GitHub to redeliver the webhooks it could not deliver (`github_integration.recovery`),
against the fake GitHub API delivering webhooks to a real HTTP server as GitHub does."""
from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Collection
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.broker.memory import MemoryBroker
from common.http import running
from common.messages import RunRequest, decode
from github_integration.api import GitHubApi, make_http_client
from github_integration.config import GitHubIntegrationConfig
from github_integration.db import open_database
from github_integration.errors import GitHubApiError
from github_integration.recovery import DeliveryRecovery
from github_integration.service import GitHubIntegration
from tests.fakes.github_api import DELIVERY_RETENTION, FakeGitHub
from tests.github.conftest import Clock
from tests.github.test_webhooks import FIXTURE_SHAS, FIXTURES, OWNER, REPO, WORKFLOW
from tests.tcp_proxy import TcpProxy

SECRET = "recovery secret"
PUSH = (FIXTURES / "push/with-new-branch.payload.json").read_bytes()


class Receiver:
    """A webhook endpoint answering each delivery with the next status of `statuses` (then
    200, after `delay` seconds), recording the guids it got."""

    def __init__(self, *statuses: int, delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.delay = delay
        self.received: list[str] = []

    async def handle(self, request: Request) -> JSONResponse:
        self.received.append(request.headers["x-github-delivery"])
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            await asyncio.sleep(self.delay)
        return JSONResponse({}, status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])


def recovery(api: GitHubApi, known: Collection[str] = (), **settings) -> DeliveryRecovery:
    async def already(guids: Collection[str]) -> set[str]:
        return set(guids) & set(known)

    return DeliveryRecovery(api, already, **{"interval": 60.0, "lookback": 86400.0,
                                             "attempts": 3, "page_size": 2, **settings})


async def test_only_events_never_delivered_nor_known_are_asked_for(
        fake_github: FakeGitHub, github_api: GitHubApi) -> None:
    # 503, a delivery that succeeds, one failing, one known here, one refused three times.
    receiver = Receiver(503, 200, 500, 503, 400, 400, 400)
    async with running(receiver.app()) as url:
        fake_github.hook(f"{url}/hook", SECRET)
        refused = await fake_github.deliver("push", PUSH)
        delivered = await fake_github.deliver("push", PUSH)
        failed = await fake_github.deliver("push", PUSH)
        known = await fake_github.deliver("push", PUSH)
        hopeless = await fake_github.deliver("push", PUSH)
        for _ in range(2):
            await github_api.redeliver(hopeless.id)
            await fake_github.settle()
        assert [d.status_code for d in fake_github.deliveries] == [503, 200, 500, 503, 400, 400,
                                                                    400]

        # Pages of two: the listing follows the Link header's cursor to the first delivery.
        asked = await recovery(github_api, known={known.guid}).recover()
        assert sorted(asked) == sorted([refused.guid, failed.guid])
        again = [d for d in await fake_github.settle() if d.guid in asked]
        assert {d.guid for d in again} == set(asked)
        assert all(d.redelivery and d.status_code == 200 for d in again)
        first = next(d for d in again if d.guid == refused.guid)
        assert first.headers == refused.headers and first.body == refused.body
        assert receiver.received.count(refused.guid) == 2

        # Delivered now: the next pass asks for nothing.
        assert await recovery(github_api, known={known.guid}).recover() == []
    assert delivered.guid not in asked


async def test_a_redelivery_under_way_is_not_asked_for_again(
        fake_github: FakeGitHub, github_api: GitHubApi) -> None:
    async with running(Receiver(503, delay=1.0).app()) as url:
        fake_github.hook(f"{url}/hook", SECRET)
        refused = await fake_github.deliver("push", PUSH)
        passes = recovery(github_api)
        assert await passes.recover() == [refused.guid]
        # GitHub lists the redelivery only once it was answered, a second from now.
        assert await passes.recover() == []
        assert [d.status_code for d in await fake_github.settle()] == [200]


async def test_the_lookback_bounds_what_is_asked_for(
        fake_github: FakeGitHub, github_api: GitHubApi, clock: Clock) -> None:
    async with running(Receiver(503, 503).app()) as url:
        fake_github.hook(f"{url}/hook", SECRET)
        old = await fake_github.deliver("push", PUSH)
        clock.now += 7200
        recent = await fake_github.deliver("push", PUSH)
        asked = await recovery(github_api, lookback=3600.0, clock=clock).recover()
    assert asked == [recent.guid] and old.guid not in asked


async def test_the_fake_refuses_unknown_and_expired_deliveries_as_github_does(
        fake_github: FakeGitHub, github_api: GitHubApi, clock: Clock) -> None:
    with pytest.raises(GitHubApiError) as unknown:
        await github_api.redeliver(987654321)
    assert unknown.value.status == 404 and not unknown.value.retryable
    async with running(Receiver(500).app()) as url:
        fake_github.hook(f"{url}/hook", SECRET)
        delivery = await fake_github.deliver("push", PUSH)
    clock.now += DELIVERY_RETENTION + 1
    with pytest.raises(GitHubApiError) as expired:
        await github_api.redeliver(delivery.id)
    assert expired.value.status == 422
    assert await github_api.hook_deliveries() == ([], None)
    with pytest.raises(GitHubApiError) as bad_cursor:
        await github_api.hook_deliveries(cursor="not-a-cursor")
    assert bad_cursor.value.status == 422


async def test_a_push_refused_while_the_database_was_down_ends_as_a_run(
        pg_dsn: str, app_key, tmp_path: Path) -> None:
    await (await open_database(pg_dsn, min_size=1, max_size=1)).close()  # migrates
    proxy = TcpProxy("127.0.0.1", int(re.search(r":(\d+)/", pg_dsn).group(1)))
    await proxy.start()
    proxied = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", pg_dsn)
    runs: list[RunRequest] = []

    async def collect(delivery) -> None:
        runs.append(decode(delivery.body, RunRequest))
        await delivery.ack()

    async with MemoryBroker(f"recovery-{uuid.uuid4().hex[:8]}") as broker, \
            FakeGitHub(1, app_key.public_key()) as fake:
        await broker.consume_runs(collect)
        fake.add_repo(OWNER, REPO, installation_ids={1},
                      files={(FIXTURE_SHAS[2], ".solstice/workflow.kdl"): WORKFLOW})
        config = GitHubIntegrationConfig(app_id=1, private_key_path=tmp_path / "unused.pem",
                                         webhook_secret=SECRET, api_url=fake.url,
                                         events_queue=f"github-{uuid.uuid4().hex[:8]}",
                                         redelivery_interval=0.2)
        pool = await open_database(proxied, min_size=1, max_size=2)
        http = make_http_client(fake.url, timeout=2.0)
        service = GitHubIntegration(config, pool, broker, http, app_key)
        try:
            async with running(service.app()) as url:
                fake.hook(f"{url}/webhooks/github", SECRET)
                await proxy.stop()
                push = await fake.deliver("push", PUSH)
                assert push.status_code == 503
                await asyncio.sleep(1.0)  # passes while the database is down ask for nothing
                assert [d for d in fake.deliveries if d.redelivery] == []
                assert runs == []

                await proxy.start()
                for _ in range(100):
                    if runs:
                        break
                    await asyncio.sleep(0.1)
                [run] = runs
                assert run.commit_sha == FIXTURE_SHAS[2]
                [again] = await fake.settle()
                assert again.guid == push.guid and again.status_code == 202
                await asyncio.sleep(0.6)  # later passes: delivered, nothing more to ask
                assert len(fake.deliveries) == 2 and len(runs) == 1
        finally:
            await http.aclose()
            await pool.close()
            await proxy.stop()
