"""The lease is kept while a machine is provisioned: a bhyve install may outlast `lease_ttl`,
and a lease left to expire meanwhile would let a reaper start the job a second time."""
from __future__ import annotations

import asyncio

from orchestrator.backends.base import VM, VMSpec
from orchestrator.backends.local import LocalBackend
from tests.orchestrator.conftest import Factory

WORKFLOW = '''
workflow {
    job id="j" runs_on="local" { step name="x" run="echo provisioned slowly"; }
}'''


class SlowProvisionBackend(LocalBackend):
    """The local backend, taking several lease lifetimes to provision a machine."""

    seconds = 5.0

    async def provision(self, spec: VMSpec) -> VM:
        await asyncio.sleep(self.seconds)
        return await super().provision(spec)


async def test_a_provision_longer_than_the_lease_runs_the_job_once(
        orchestrator_factory: Factory) -> None:
    harness = await orchestrator_factory(backend_class=SlowProvisionBackend, lease_ttl=1.5,
                                         reap_interval=0.3)
    summary = await harness.run(WORKFLOW)
    assert summary.state == "success", summary
    [job] = summary.jobs
    attempt = await harness.orchestrator.db.pool.fetchval(
        "SELECT attempt FROM jobs WHERE id = $1", job.job_id)
    assert attempt == 1, "the job was handed back while its machine was being provisioned"
