"""Approval from GitHub, end to end: a fork's pull request (a signed webhook) -> an untrusted run
waiting in a real orchestrator process -> a check run `action_required` with "Approve and run"
at the fake GitHub, telling the contributor to wait for a maintainer -> a press by someone
without write access changes nothing -> a maintainer's press (the `requested_action` webhook)
-> the job runs and its check run ends `success`; the run records the maintainer."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from common.forge.signature import GITHUB_PREFIX, sign
from common.http import running
from github_integration.api import make_http_client
from github_integration.config import GitHubIntegrationConfig, RepoSettings
from github_integration.db import open_database
from github_integration.service import GitHubIntegration
from tests.e2e.test_private_checkout import app_key_file, make_private_repo
from tests.fakes.github_api import CheckRun, FakeGitHub
from tests.fixtures import FIXTURES
from tests.multihost.cluster import Cluster

pytestmark = pytest.mark.slow

SECRET = "webhook-s3cret"
WORKFLOW = """workflow name="ci" {
    job id="build" runs_on="local" {
        step name="build" run="echo approved-and-built"
    }
}
"""


async def until(condition: Callable[[], object], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.1)


async def test_maintainer_presses_approve_and_run(pg_dsn: str, amqp_url: str, broker_prefix: str,
                                                  tmp_path: Path) -> None:
    app_key, pem = app_key_file(tmp_path)
    async with FakeGitHub(1, app_key.public_key(), git_root=tmp_path / "git") as fake:
        sha = make_private_repo(tmp_path / "git", "acme", "app", WORKFLOW)
        fake.add_repo("acme", "app", installation_ids={1}, branches={"main": sha},
                      files={(sha, ".solstice/workflow.kdl"): WORKFLOW},
                      permissions={"maintainer": "write", "drive-by": "read"})
        config = GitHubIntegrationConfig(
            app_id=1, private_key_path=pem, webhook_secret=SecretStr(SECRET), api_url=fake.url,
            amqp_url=amqp_url, broker_prefix=broker_prefix,
            repos={"acme/app": RepoSettings(approval_for_untrusted=True)})
        pool: asyncpg.Pool = await open_database(pg_dsn, min_size=1, max_size=4)
        http_client = make_http_client(fake.url, timeout=2.0)
        try:
            async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path / "cluster") as cluster:
                assert cluster.broker is not None and cluster.db is not None
                service = GitHubIntegration(config, pool, cluster.broker, http_client, app_key)
                async with running(service.app()) as url, httpx.AsyncClient(base_url=url) as http:
                    cluster.start("h1", capacity="local=1")
                    await cluster.ready("h1")

                    async def post(event: str, body: dict) -> httpx.Response:
                        raw = json.dumps(body).encode()
                        return await http.post("/webhooks/github", content=raw, headers={
                            "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
                            "X-Hub-Signature-256": sign(SECRET, raw, prefix=GITHUB_PREFIX)})

                    opened = json.loads(
                        (FIXTURES / "github/pull_request/opened.payload.json").read_text())
                    repository = {**opened["repository"], "name": "app", "full_name": "acme/app",
                                  "owner": {**opened["repository"]["owner"], "login": "acme"},
                                  "clone_url": f"{fake.url}/acme/app.git",
                                  "default_branch": "main"}
                    pr = opened["pull_request"]
                    pr["head"] = {**pr["head"], "sha": sha,
                                  "repo": {**pr["head"]["repo"], "id": 999}}  # a fork
                    pr["base"] = {**pr["base"], "ref": "main", "repo": repository}
                    pr["user"] = {**pr["user"], "login": "contributor"}
                    opened["repository"] = repository
                    response = await post("pull_request", opened)
                    assert response.status_code == 202, response.text

                    def waiting() -> CheckRun | None:
                        return next((r for r in fake.check_runs.values()
                                     if r.conclusion == "action_required"), None)
                    await until(waiting)
                    check = waiting()
                    assert check is not None and check.external_id
                    body = check.history[-1]
                    assert body["actions"][0]["label"] == "Approve and run"
                    assert "maintainer" in check.output["title"]
                    assert "ciadm" not in check.output["summary"]
                    assert "/solstice approve" in check.output["summary"]

                    pressed = json.loads(
                        (FIXTURES / "github/check_run/requested_action.payload.json").read_text())
                    pressed.pop("organization")
                    pressed["repository"], pressed["installation"] = repository, {"id": 1}
                    pressed["check_run"] |= {"id": check.id, "name": check.name,
                                             "external_id": check.external_id, "head_sha": sha}
                    pressed["requested_action"] = {"identifier": "approve"}
                    pressed["sender"] = {**pressed["sender"], "login": "drive-by"}
                    refused = await post("check_run", pressed)
                    assert refused.status_code == 202, refused.text  # stored; the worker refuses
                    await asyncio.sleep(1.0)
                    assert await cluster.db.fetchval(
                        "SELECT count(*) FROM jobs WHERE state = 'awaiting_approval'") == 1

                    pressed["sender"] = {**pressed["sender"], "login": "maintainer"}
                    approved = await post("check_run", pressed)
                    assert approved.status_code == 202, approved.text
                    await until(lambda: any(r.conclusion == "success"
                                            for r in fake.check_runs.values()), 120)
                    approver = await cluster.db.fetchval("SELECT approved_by FROM runs")
        finally:
            await http_client.aclose()
            await pool.close()
    assert approver == "github:maintainer"
