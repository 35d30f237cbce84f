"""The full path on the real RabbitMQ and PostgreSQL: a signed Forgejo push -> the integration ->
a RunRequest -> a real orchestrator process -> jobs on the local backend -> job events ->
commit statuses at the fake forge, pending first and final last, per job."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import asyncpg
import pytest

from common.forge.migrate import open_pool
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import FIXTURES, make_config, service_with
from tests.multihost.cluster import Cluster

WORKFLOW = """workflow name="ci" {
    job id="good" runs_on="local" {
        step name="build" run="test -f .solstice/workflow.kdl && echo built"
    }
    job id="bad" runs_on="local" {
        step name="unit tests" run="echo failing >&2; exit 3"
    }
}
"""


def make_repo(path: Path, workflow: str = WORKFLOW) -> str:
    """A real git repository holding `workflow`; returns the commit sha."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True,
                              text=True, env=env).stdout.strip()

    (path / ".solstice").mkdir(parents=True)
    (path / ".solstice" / "workflow.kdl").write_text(workflow)
    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-q", "-m", "ci")
    return git("rev-parse", "HEAD")


@pytest.mark.slow
async def test_signed_push_to_statuses_through_a_real_orchestrator(
        pg_dsn: str, amqp_url: str, broker_prefix: str, tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "repo")
    body = json.loads((FIXTURES / "forgejo" / "HookPush.json").read_text())
    body.update(after=sha, ref="refs/heads/main")
    body["repository"] = {**body["repository"], "id": 77, "name": "app", "full_name": "acme/app",
                          "owner": {"login": "acme", "username": "acme"},
                          "clone_url": f"file://{tmp_path / 'repo'}", "default_branch": "main"}
    async with FakeForgejo() as forge, \
            Cluster(pg_dsn, amqp_url, broker_prefix, tmp_path / "cluster") as cluster:
        forge.add_repo("acme", "app", repo_id=77, branches={"main": sha},
                       files={(sha, ".solstice/workflow.kdl"): WORKFLOW})
        cluster.start("h1", capacity="local=2")
        await cluster.ready("h1")
        pool: asyncpg.Pool = await open_pool(pg_dsn, min_size=1, max_size=5)
        assert cluster.broker is not None
        try:
            async with service_with(make_config(forge), forge, pool, cluster.broker) as h:
                response = await h.post(body, "push", delivery="e2e-1")
                assert response.status_code == 202, response.text
                finals = {"solstice/ci/good": "success", "solstice/ci/bad": "failure"}

                def done() -> bool:
                    last = {s.context: s.state for s in forge.statuses}
                    return all(last.get(c) == state for c, state in finals.items())
                try:
                    await h.wait_for(done, timeout=120)
                except TimeoutError:
                    raise AssertionError(f"statuses: {forge.statuses}\n{cluster.tail('h1')}") from None
        finally:
            await pool.close()
    assert forge.rejected == []
    for context, final in finals.items():
        states = [(s.state, s.description) for s in forge.statuses_for(sha, context)]
        assert states[0][0] == "pending" and states[-1][0] == final, states
        assert [s for s, _ in states[:-1]] == ["pending"] * (len(states) - 1), states
        assert ("pending", "running") in states, states
    [failed] = [s for s in forge.statuses_for(sha, "solstice/ci/bad") if s.state == "failure"]
    assert "unit tests" in failed.description
