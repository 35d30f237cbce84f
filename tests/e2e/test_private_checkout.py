"""Private repositories, end to end: a signed push webhook -> the integration -> a real
orchestrator process (RabbitMQ, PostgreSQL, local backend) which asks the integration for the
job's checkout credential -> the runner clones over smart HTTP from the fake forge, which
refuses anyone without a credential.

Each job dumps its `.git/config` and environment outside the workspace (the local backend's
runner can write there), so the test reads them unmasked: the credential must be in neither,
nor in the stored log, and a credential the job prints is masked.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from common.forge.migrate import open_pool
from common.forge.signature import GITHUB_PREFIX, sign
from common.http import running
from forge_integration.config import ForgeIntegrationConfig, Site
from forge_integration.main import clients_for
from forge_integration.service import ForgeIntegration
from github_integration.api import make_http_client
from github_integration.config import GitHubIntegrationConfig
from github_integration.db import open_database
from github_integration.service import GitHubIntegration
from tests.fakes.forgejo_api import FakeForgejo
from tests.fakes.github_api import FakeGitHub
from tests.fixtures import FIXTURES
from tests.joblog import cluster_job_log
from tests.multihost.cluster import Cluster

pytestmark = pytest.mark.slow

INTERNAL = "internal-token-between-orchestrator-and-integration"
WEBHOOK_SECRET = "webhook-s3cret"
READ_TOKEN = "forgejo-read-token-0123456789abcdef"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
           "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}


def workflow(dump: Path) -> str:
    return f"""workflow name="ci" {{
    job id="inspect" runs_on="local" {{
        step name="dump" run="cat .git/config > {dump}/gitconfig && env > {dump}/env"
        step name="show" run="cat {dump}/printed && echo tree-has-$(cat marker.txt)"
    }}
}}
"""


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV})


def make_private_repo(git_root: Path, owner: str, name: str, source: str) -> str:
    """A bare repository `git_root/owner/name.git` whose main holds the workflow; its sha."""
    work = git_root.parent / f"work-{name}"
    (work / ".solstice").mkdir(parents=True)
    (work / ".solstice" / "workflow.kdl").write_text(source)
    (work / "marker.txt").write_text("private-marker\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "ci"]):
        assert git(work, *args).returncode == 0
    bare = git_root / owner / f"{name}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    assert git(git_root, "clone", "-q", "--bare", str(work), str(bare)).returncode == 0
    return git(work, "rev-parse", "HEAD").stdout.strip()


async def successful_job_log(cluster: Cluster, timeout: float = 90) -> bytes:
    """The stored log of the cluster's one job, once it ended; fails unless it succeeded."""
    assert cluster.db is not None
    async with asyncio.timeout(timeout):
        while (job := await cluster.db.fetchrow(
                "SELECT id, state, message FROM jobs WHERE finished_at IS NOT NULL")) is None:
            await asyncio.sleep(0.2)
    log = await cluster_job_log(cluster.db, cluster.root / "blobs", job["id"])
    assert job["state"] == "success", (dict(job), log.decode(errors="replace"), cluster.tail("h1"))
    return log


def app_key_file(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    """A fresh GitHub App key and its PEM file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return key, pem


async def assert_anonymous_clone_refused(url: str) -> None:
    """`git ls-remote` without a credential fails (run off the loop serving the fake)."""
    refused = await asyncio.create_subprocess_exec(
        "git", "ls-remote", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **GIT_ENV})
    out, err = await refused.communicate()
    assert refused.returncode != 0, out
    assert b"Authentication failed" in err or b"could not read Username" in err, err


async def test_forgejo_private_repository_cloned_with_the_configured_read_token(
        pg_dsn: str, amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "printed").write_text(f"the job prints {READ_TOKEN}\n")
    source = workflow(dump)
    async with FakeForgejo(git_root=tmp_path / "git") as forge:
        sha = make_private_repo(tmp_path / "git", "acme", "app", source)
        forge.add_repo("acme", "app", repo_id=77, branches={"main": sha},
                       files={(sha, ".solstice/workflow.kdl"): source}, private=True)
        forge.read_tokens[READ_TOKEN] = {"acme/app"}
        clone_url = f"{forge.url}/acme/app.git"
        await assert_anonymous_clone_refused(clone_url)
        config = ForgeIntegrationConfig(
            webhook_secret=SecretStr(WEBHOOK_SECRET), internal_token=SecretStr(INTERNAL),
            sites={"forgejo": Site(url=forge.url, token=SecretStr(forge.token), timeout=2.0,
                                   checkout_token=SecretStr(READ_TOKEN),
                                   checkout_username="ci-reader")})
        pool: asyncpg.Pool = await open_pool(pg_dsn, min_size=1, max_size=4)
        clients = clients_for(config)
        try:
            async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path / "cluster") as cluster:
                assert cluster.broker is not None
                service = ForgeIntegration(config, pool, cluster.broker, clients)
                async with running(service.app()) as url, httpx.AsyncClient(base_url=url) as http:
                    cluster.start("h1", capacity="local=1", **{
                        "checkout_credentials__forgejo__url": url,
                        "checkout_credentials__forgejo__token": INTERNAL})
                    await cluster.ready("h1")
                    body = json.loads((FIXTURES / "forgejo" / "HookPush.json").read_text())
                    body.update(after=sha, ref="refs/heads/main")
                    body["repository"] = {
                        **body["repository"], "id": 77, "name": "app", "full_name": "acme/app",
                        "owner": {"login": "acme", "username": "acme"}, "private": True,
                        "clone_url": clone_url, "default_branch": "main"}
                    raw = json.dumps(body).encode()
                    response = await http.post("/webhooks/forgejo", content=raw, headers={
                        "X-Forgejo-Event": "push", "X-Forgejo-Delivery": str(uuid.uuid4()),
                        "X-Forgejo-Signature": sign(WEBHOOK_SECRET, raw)})
                    assert response.status_code == 202, response.text
                    log = await successful_job_log(cluster)
        finally:
            for client in clients.values():
                await client.close()
            await pool.close()
    assert b"tree-has-private-marker" in log
    assert b"the job prints ***" in log and READ_TOKEN.encode() not in log
    assert "[core]" in (dump / "gitconfig").read_text()
    assert READ_TOKEN not in (dump / "gitconfig").read_text()
    assert READ_TOKEN not in (dump / "env").read_text()
    assert forge.git is not None
    assert ("acme/app", "ci-reader", True) in forge.git.attempts
    assert ("acme/app", None, False) in forge.git.attempts  # the anonymous ls-remote


async def test_github_private_repository_cloned_with_a_per_job_installation_token(
        pg_dsn: str, amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    app_key, pem = app_key_file(tmp_path)
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "printed").write_text("nothing secret here\n")
    source = workflow(dump)
    async with FakeGitHub(1, app_key.public_key(), git_root=tmp_path / "git") as fake:
        sha = make_private_repo(tmp_path / "git", "acme", "app", source)
        fake.add_repo("acme", "app", installation_ids={1}, private=True,
                      files={(sha, ".solstice/workflow.kdl"): source})
        fake.add_repo("acme", "other", installation_ids={1})
        clone_url = f"{fake.url}/acme/app.git"
        await assert_anonymous_clone_refused(clone_url)
        config = GitHubIntegrationConfig(
            app_id=1, private_key_path=pem, webhook_secret=SecretStr(WEBHOOK_SECRET),
            api_url=fake.url, amqp_url=amqp_url, broker_prefix=broker_prefix,
            internal_token=SecretStr(INTERNAL))
        pool: asyncpg.Pool = await open_database(pg_dsn, min_size=1, max_size=4)
        http_client = make_http_client(fake.url, timeout=2.0)
        try:
            async with Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path / "cluster") as cluster:
                assert cluster.broker is not None
                service = GitHubIntegration(config, pool, cluster.broker, http_client, app_key)
                async with running(service.app()) as url, httpx.AsyncClient(base_url=url) as http:
                    cluster.start("h1", capacity="local=1", **{
                        "checkout_credentials__github__url": url,
                        "checkout_credentials__github__token": INTERNAL})
                    await cluster.ready("h1")
                    body = json.loads(
                        (FIXTURES / "github" / "push" / "with-new-branch.payload.json").read_text())
                    body.update(after=sha, ref="refs/heads/main", deleted=False)
                    body["repository"] = {
                        **body["repository"], "name": "app", "full_name": "acme/app",
                        "owner": {**body["repository"]["owner"], "login": "acme", "name": "acme"},
                        "private": True, "clone_url": clone_url, "default_branch": "main"}
                    body["installation"] = {"id": 1}
                    raw = json.dumps(body).encode()
                    response = await http.post("/webhooks/github", content=raw, headers={
                        "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw, prefix=GITHUB_PREFIX)})
                    assert response.status_code == 202, response.text
                    log = await successful_job_log(cluster)
        finally:
            await http_client.aclose()
            await pool.close()
    assert b"tree-has-private-marker" in log
    assert fake.git is not None
    # Every request of the clone (refs, then the pack) carried the token and was let in.
    authenticated = {(user, allowed) for _, user, allowed in fake.git.attempts if user}
    assert authenticated == {("x-access-token", True)}
    # The token the job cloned with: this repository only, contents read only.
    clone_tokens = [token for token, grant in fake.tokens.items()
                    if dict(grant.permissions) == {"contents": "read", "metadata": "read"}]
    [token] = clone_tokens
    grant = fake.grant_of(token)
    assert grant is not None and grant.repositories == frozenset({"acme/app"})
    assert fake.revoked == [token]  # handed back and revoked once the machine was gone
    for place in (log.decode(errors="replace"), (dump / "gitconfig").read_text(),
                  (dump / "env").read_text()):
        assert token not in place
    assert "[core]" in (dump / "gitconfig").read_text()
