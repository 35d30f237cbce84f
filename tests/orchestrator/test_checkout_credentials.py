"""The orchestrator's side of checkout credentials: a job whose integration gives no credential
ends `error` before any machine is provisioned, saying why (the other side is tested end to
end in tests/e2e/test_private_checkout.py)."""
from __future__ import annotations

import socket

from pydantic import SecretStr

from common.messages import JobState, Repo
from orchestrator.checkout_credentials import CredentialSource

WORKFLOW = 'workflow name="ci" { job id="build" runs_on="local" { step name="b" run="true" } }'


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_no_credential_no_machine(orchestrator_factory) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    harness = await orchestrator_factory(checkout_credentials={
        "github": CredentialSource(url=url, token=SecretStr("internal-token"), timeout=1.0)})
    repo = Repo(forge="github", owner="acme", name="app", clone_url="https://github.com/acme/app.git",
                installation_id=5)
    summary = await harness.run(WORKFLOW, repo=repo)
    [job] = summary.jobs
    assert job.state is JobState.ERROR
    assert job.message.startswith("infrastructure fault: checkout credential for acme/app")
    assert url in job.message
    assert await harness.logs(job.job_id) == b""  # no runner ever ran
