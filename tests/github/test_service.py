"""The service as deployed: its entry point's refusals, and a signed webhook in and check runs
out over real HTTP, RabbitMQ and PostgreSQL."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from common.broker.amqp import AmqpBroker
from common.errors import ConfigError
from common.forge.signature import GITHUB_PREFIX, sign
from common.http import running
from common.messages import JobEvent, JobState, RunRequest, decode
from common.retry import Backoff
from github_integration.api import make_http_client
from github_integration.config import GitHubIntegrationConfig
from github_integration.db import open_database
from github_integration.main import main
from github_integration.service import GitHubIntegration
from tests.fakes.github_api import FakeGitHub
from tests.github.test_webhooks import FIXTURE_SHAS, FIXTURES, OWNER, REPO, WORKFLOW, until
from tests.metrics import scrape, value


def write_config(tmp_path: Path, **values: object) -> Path:
    lines = ["[github_integration]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = tmp_path / "solstice.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SOLSTICE_"):
            monkeypatch.delenv(name)


def test_refuses_to_start_without_a_webhook_secret(tmp_path, clean_env, capsys) -> None:
    config = write_config(tmp_path, app_id=1, private_key_path=str(tmp_path / "key.pem"))
    assert main(["--config", str(config)]) == 2
    assert "no webhook secret configured" in capsys.readouterr().err


def test_refuses_to_start_without_the_app_identity(tmp_path, clean_env, capsys) -> None:
    config = write_config(tmp_path, webhook_secret="s")
    assert main(["--config", str(config)]) == 2
    assert "app_id and private_key_path are required" in capsys.readouterr().err


def test_unreadable_private_key_is_a_clear_error(tmp_path) -> None:
    config = GitHubIntegrationConfig(app_id=1, webhook_secret="hunter2-webhook-secret",
                                     private_key_path=tmp_path / "missing.pem",
                                     amqp_url="amqp://127.0.0.1/")
    config.check()
    with pytest.raises(ConfigError) as caught:
        config.private_key_pem()
    assert "cannot read the GitHub App private key" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(config)


async def test_webhook_to_rabbitmq_and_job_events_to_check_runs(
        pg_dsn: str, amqp_url: str, broker_prefix: str, app_key, tmp_path: Path) -> None:
    import aio_pika

    pem = tmp_path / "app.pem"
    pem.write_bytes(app_key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    async with FakeGitHub(1, app_key.public_key()) as fake, \
            AmqpBroker(amqp_url, broker_prefix) as broker:
        fake.add_repo(OWNER, REPO, installation_ids={1},
                      files={(FIXTURE_SHAS[2], ".solstice/workflow.kdl"): WORKFLOW})
        config = GitHubIntegrationConfig(app_id=1, private_key_path=pem, webhook_secret="s3cret",
                                         api_url=fake.url, amqp_url=amqp_url,
                                         broker_prefix=broker_prefix)
        pool = await open_database(pg_dsn, min_size=1, max_size=4)
        http = make_http_client(fake.url, timeout=2.0)
        service = GitHubIntegration(config, pool, broker, http, app_key,
                                    outbox_backoff=Backoff(initial=0.01, maximum=0.05),
                                    outbox_poll=0.05)
        runs: asyncio.Queue[RunRequest] = asyncio.Queue()

        async def collect(delivery) -> None:
            await runs.put(decode(delivery.body, RunRequest))
            await delivery.ack()

        try:
            await broker.consume_runs(collect)
            async with running(service.app()) as url, httpx.AsyncClient(base_url=url) as client:
                raw = (FIXTURES / "push/with-new-branch.payload.json").read_bytes()
                response = await client.post("/webhooks/github", content=raw, headers={
                    "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                    "X-Hub-Signature-256": sign("s3cret", raw, prefix=GITHUB_PREFIX)})
                assert response.status_code == 202, response.text
                run = await asyncio.wait_for(runs.get(), 10)
                assert run.commit_sha == FIXTURE_SHAS[2] and run.repo.installation_id == 1

                job_id = uuid.uuid4()
                for sequence, state in enumerate([JobState.QUEUED, JobState.RUNNING,
                                                  JobState.SUCCESS]):
                    await broker.publish_event(JobEvent(
                        run_id=uuid.uuid4(), job_id=job_id, job_key="build", workflow_name="ci",
                        state=state, sequence=sequence, repo=run.repo, commit_sha=run.commit_sha,
                        request_id=run.request_id, log_url="https://ci.example/jobs/1"))
                await until(lambda: any(r.conclusion for r in fake.check_runs.values()), 10)
                [check] = fake.check_runs.values()
                assert check.conclusion == "success" and check.name == "solstice/ci/build"
                assert [b.get("status") for b in check.history] == ["queued", "in_progress",
                                                                    "completed"]
                samples = await scrape(url)
                assert value(samples, "solstice_webhooks_total", forge="github", event="push",
                             outcome="accepted") >= 1
                assert value(samples, "solstice_outbox_backlog", outbox="github") == 0
                assert ("solstice_outbox_backlog", frozenset({("outbox", "github")})) in samples
        finally:
            await http.aclose()
            await pool.close()
            async with await aio_pika.connect(amqp_url) as connection:
                channel = await connection.channel()
                for queue in ("runs", "dead", f"events.{config.events_queue}"):
                    await channel.queue_delete(f"{broker_prefix}.{queue}")


def test_refuses_to_start_without_a_broker(tmp_path, clean_env, capsys) -> None:
    """Without RabbitMQ the runs would go to an in-process queue no orchestrator reads."""
    config = write_config(tmp_path, app_id=1, private_key_path=str(tmp_path / "key.pem"),
                          webhook_secret="s")
    assert main(["--config", str(config)]) == 2
    assert "no amqp_url" in capsys.readouterr().err
