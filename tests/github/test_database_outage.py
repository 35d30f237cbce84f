"""The GitHub App's webhook during a database outage: a 503 with a JSON error (not a bare
500), `/readyz` says which dependency is down, and the same delivery is processed once the
database is back (it was not recorded as handled)."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx

from common.broker.memory import MemoryBroker
from common.forge.signature import GITHUB_PREFIX, sign
from github_integration.api import make_http_client
from github_integration.config import GitHubIntegrationConfig
from github_integration.db import open_database
from github_integration.service import GitHubIntegration
from tests.fakes.github_api import FakeGitHub
from tests.github.test_webhooks import FIXTURE_SHAS, FIXTURES, OWNER, REPO, WORKFLOW
from tests.tcp_proxy import TcpProxy

SECRET = "outage secret"


async def test_webhook_answers_503_json_while_the_database_is_down(
        pg_dsn: str, app_key, tmp_path: Path) -> None:
    await (await open_database(pg_dsn, min_size=1, max_size=1)).close()  # migrates
    proxy = TcpProxy("127.0.0.1", int(re.search(r":(\d+)/", pg_dsn).group(1)))
    await proxy.start()
    proxied = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", pg_dsn)
    broker = MemoryBroker("outage")
    await broker.connect()
    async with FakeGitHub(1, app_key.public_key()) as fake:
        fake.add_repo(OWNER, REPO, installation_ids={1},
                      files={(FIXTURE_SHAS[2], ".solstice/workflow.kdl"): WORKFLOW})
        config = GitHubIntegrationConfig(app_id=1, private_key_path=tmp_path / "unused.pem",
                                         webhook_secret=SECRET, api_url=fake.url)
        pool = await open_database(proxied, min_size=1, max_size=2)
        http = make_http_client(fake.url, timeout=2.0)
        service = GitHubIntegration(config, pool, broker, http, app_key)
        raw = (FIXTURES / "push/with-new-branch.payload.json").read_bytes()
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                   "X-Hub-Signature-256": sign(SECRET, raw, prefix=GITHUB_PREFIX)}
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app()),
                                         base_url="http://test") as client:
                await proxy.stop()
                down = await client.post("/webhooks/github", content=raw, headers=headers)
                assert down.status_code == 503, down.text
                assert down.json()["error"].startswith("database unavailable: "), down.text
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"] != "ok"
                assert ready.json()["checks"]["broker"] == "ok"

                await proxy.start()
                again = await client.post("/webhooks/github", content=raw, headers=headers)
                assert again.status_code == 202, again.text
                assert (await client.get("/readyz")).status_code == 200
        finally:
            await http.aclose()
            await pool.close()
            await broker.close()
            await proxy.stop()
