"""A private repository checked out inside a real VM: the fake Forgejo serves the repository
over smart HTTP and refuses anonymous clones; the guest reaches it through the one forwarded
address; the orchestrator (qemu backend) asks the Forgejo integration's credential endpoint for
the job's read token and the runner in the guest clones with it. The token is in neither the
guest's `.git/config`, the steps' environment nor the stored log.

Real Postgres, real gRPC, real QEMU; slow (an emulated boot, or KVM where it runs guests).
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from common.forge.credentials import credential_routes
from common.forge.webhook import webhook_app
from common.http import running as serving
from common.messages import EventKind, JobState, Repo, RunRequest
from forge_integration.checkout import ConfiguredTokens
from forge_integration.config import ForgeIntegrationConfig, Site
from orchestrator.backends.qemu import GuestForward, QemuBackend, QemuLabel, QemuSettings
from orchestrator.checkout_credentials import CredentialSource
from orchestrator.config import OrchestratorConfig
from orchestrator.standalone import private_admin, running
from tests.e2e.test_private_checkout import assert_anonymous_clone_refused, make_private_repo
from tests.fakes.forgejo_api import FakeForgejo
from tests.joblog import stored_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

GUEST_ADDRESS = "10.0.2.102"
GUEST_PORT = 3000
INTERNAL = "internal-token-between-orchestrator-and-integration"
READ_TOKEN = "forgejo-read-token-for-the-vm-0123456789"
WORKFLOW = """workflow name="ci" {
    job id="vm" runs_on="linux" timeout="10m" {
        resources vcpus=2 ram="1G" disk="4G"
        step name="inspect" run="x=LEAK; cat marker.txt; if grep -q forgejo-read-token .git/config; then echo ${x}-GITCONFIG; fi; if env | grep -q forgejo-read-token; then echo ${x}-ENV; fi; head -3 .git/config"
    }
}
"""  # noqa: E501 (a KDL step line)


@pytest.fixture
async def forge(tmp_path: Path) -> AsyncIterator[tuple[FakeForgejo, str]]:
    async with FakeForgejo(git_root=tmp_path / "git") as fake:
        sha = make_private_repo(tmp_path / "git", "acme", "app", WORKFLOW)
        fake.add_repo("acme", "app", repo_id=7, branches={"main": sha}, private=True)
        fake.read_tokens[READ_TOKEN] = {"acme/app"}
        yield fake, sha


async def test_private_repository_cloned_in_a_real_vm(
        pg_dsn: str, tmp_path: Path, linux_image: QemuLabel,
        forge: tuple[FakeForgejo, str]) -> None:
    fake, sha = forge
    await assert_anonymous_clone_refused(f"{fake.url}/acme/app.git")
    integration = ForgeIntegrationConfig(sites={"forgejo": Site(
        url=fake.url, checkout_token=SecretStr(READ_TOKEN), checkout_username="reader")})
    tokens = ConfiguredTokens(integration)
    credentials = webhook_app(credential_routes(SecretStr(INTERNAL), tokens.issue, tokens.revoke))
    port = int(fake.url.rsplit(":", 1)[1])
    backend = QemuBackend(QemuSettings(
        state_dir=tmp_path / "vms", labels={"linux": linux_image},
        forwards=[GuestForward(guest_address=GUEST_ADDRESS, guest_port=GUEST_PORT,
                               host="127.0.0.1", port=port)]))
    async with serving(credentials) as integration_url:
        config = OrchestratorConfig(
            host_name=f"vm-{uuid.uuid4().hex[:8]}", state_dir=tmp_path / "state",
            database_url=pg_dsn, grpc_listen="127.0.0.1:0", backend="qemu",
            capacity={"linux": 1}, boot_timeout=420, heartbeat_timeout=90, lease_ttl=120,
            checkout_credentials={"forgejo": CredentialSource(url=integration_url,
                                                              token=SecretStr(INTERNAL))},
            **private_admin())
        async with running(config, backend=backend) as orch:
            request = RunRequest(
                request_id=str(uuid.uuid4()), workflow_source=WORKFLOW, commit_sha=sha,
                repo=Repo(forge="forgejo", owner="acme", name="app",
                          clone_url=f"http://{GUEST_ADDRESS}:{GUEST_PORT}/acme/app.git"),
                ref="refs/heads/main", event=EventKind.PUSH, branch="main")
            summary = await asyncio.wait_for(orch.api.wait(await orch.api.submit(request)), 840)
            [job] = summary.jobs
            logs = await stored_log(orch, job.job_id)
    assert job.state == JobState.SUCCESS, (job.message, logs.decode(errors="replace"))
    assert b"private-marker" in logs and b"[core]" in logs
    assert b"LEAK-GITCONFIG" not in logs and b"LEAK-ENV" not in logs
    assert READ_TOKEN.encode() not in logs
    assert fake.git is not None and ("acme/app", "reader", True) in fake.git.attempts
