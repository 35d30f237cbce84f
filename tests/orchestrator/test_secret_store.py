"""The secret store on real PostgreSQL: sealing, scopes and filters, rotation, and production
jobs taking their secrets from it (real orchestrator, gRPC and runner, local backend)."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import ConfigError
from common.messages import JobState, Repo
from orchestrator.backends.base import VM, VMSpec
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.secretstore import RunContext, SecretStore, SecretsUnavailable, parse_scope
from orchestrator.secretstore.keys import (
    MissingKey,
    SecretKeyConfig,
    load_keyring,
)
from orchestrator.secretstore.scopes import InvalidScope
from orchestrator.secretstore.store import InvalidSecret
from tests.orchestrator.conftest import Factory, Harness

VALUE = "deploy-key-value-9f8e7d"
REPO = Repo(forge="github", owner="Acme", name="Widgets", clone_url="https://example/x.git")


def key_file(directory: Path, key_id: str) -> dict[str, str]:
    path = directory / f"key-{key_id}"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return {"id": key_id, "file": str(path)}


def run(event: str = "push", branch: str | None = "main", repo: Repo = REPO) -> RunContext:
    return RunContext(repo=repo, event=event, branch=branch, trusted=True)


@pytest.fixture
async def store(orchestrator_factory: Factory, tmp_path: Path) -> SecretStore:
    harness = await orchestrator_factory(secret_keys=[key_file(tmp_path, "k1")])
    return harness.orchestrator.secret_store


def test_scopes_parse_and_print() -> None:
    assert str(parse_scope("global")) == "global"
    assert str(parse_scope("owner:Acme")) == "owner:acme"
    assert str(parse_scope("repo:github:Acme/Widgets")) == "repo:github:acme/widgets"
    for bad in ("", "org:acme", "owner:a/b", "repo:acme", "repo:gitlab:a/b", "owner:", "repo:a/b/c"):
        with pytest.raises(InvalidScope):
            parse_scope(bad)


def test_key_configuration_errors_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "short").write_text(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(ConfigError, match="'old'.*32-byte"):
        load_keyring([SecretKeyConfig(id="old", file=tmp_path / "short")])
    with pytest.raises(ConfigError, match="'gone'"):
        load_keyring([SecretKeyConfig(id="gone", file=tmp_path / "missing")])
    with pytest.raises(ConfigError, match="SOLSTICE_TEST_NO_SUCH_KEY"):
        load_keyring([SecretKeyConfig(id="e", env="SOLSTICE_TEST_NO_SUCH_KEY")])
    with pytest.raises(ValueError, match="exactly one"):
        SecretKeyConfig(id="both")


async def test_values_are_sealed_with_a_fresh_nonce_and_bound_to_their_scope(
        store: SecretStore) -> None:
    await store.set(parse_scope("repo:acme/widgets"), "DEPLOY", VALUE, set_by="test")
    await store.set(parse_scope("owner:acme"), "DEPLOY", VALUE, set_by="test")
    rows = await store.db.pool.fetch("SELECT * FROM secrets ORDER BY id")
    assert len({bytes(r["nonce"]) for r in rows}) == 2
    assert all(VALUE.encode() not in bytes(r["ciphertext"]) for r in rows)
    assert {r["key_id"] for r in rows} == {"k1"}
    assert await store.for_job(["DEPLOY"], run()) == {"DEPLOY": VALUE}
    # A ciphertext moved to another scope (or renamed) does not decrypt.
    await store.db.pool.execute("DELETE FROM secrets WHERE scope_kind = 'owner'")
    await store.db.pool.execute("UPDATE secrets SET scope_value = 'acme/other'")
    other = run(repo=REPO.model_copy(update={"name": "other"}))
    with pytest.raises(SecretsUnavailable, match="does not decrypt") as caught:
        await store.for_job(["DEPLOY"], other)
    assert caught.value.infrastructure and VALUE not in str(caught.value)


async def test_the_narrowest_allowed_scope_wins(store: SecretStore) -> None:
    await store.set(parse_scope("global"), "TOKEN", "global-value", set_by="t")
    await store.set(parse_scope("owner:acme"), "TOKEN", "owner-value", set_by="t")
    await store.set(parse_scope("owner:forgejo:acme"), "TOKEN", "forgejo-owner-value", set_by="t")
    assert await store.for_job(["TOKEN"], run()) == {"TOKEN": "owner-value"}
    await store.set(parse_scope("repo:Acme/Widgets"), "TOKEN", "repo-value", set_by="t",
                    branches=["main", "release/*"], events=["push"])
    await store.set(parse_scope("repo:github:acme/widgets"), "TOKEN", "tag-value", set_by="t",
                    events=["tag"])
    assert await store.for_job(["TOKEN"], run()) == {"TOKEN": "repo-value"}
    assert await store.for_job(["TOKEN"], run(branch="release/2.0")) == {"TOKEN": "repo-value"}
    # Filters that exclude the run fall back to a wider scope.
    assert await store.for_job(["TOKEN"], run(branch="feature/x")) == {"TOKEN": "owner-value"}
    assert await store.for_job(["TOKEN"], run("pull_request")) == {"TOKEN": "owner-value"}
    assert await store.for_job(["TOKEN"], run("tag", None)) == {"TOKEN": "tag-value"}
    other_forge = run(repo=REPO.model_copy(update={"forge": "forgejo"}))
    assert await store.for_job(["TOKEN"], other_forge) == {"TOKEN": "repo-value"}
    other_repo = run(repo=REPO.model_copy(update={"forge": "forgejo", "name": "gadgets"}))
    assert await store.for_job(["TOKEN"], other_repo) == {"TOKEN": "forgejo-owner-value"}
    other_owner = run(repo=REPO.model_copy(update={"owner": "someone"}))
    assert await store.for_job(["TOKEN"], other_owner) == {"TOKEN": "global-value"}


async def test_a_missing_secret_names_itself_the_scopes_searched_and_the_filters(
        store: SecretStore) -> None:
    await store.set(parse_scope("repo:acme/widgets"), "DEPLOY", VALUE, set_by="t",
                    branches=["main"], events=["push"])
    with pytest.raises(SecretsUnavailable) as caught:
        await store.for_job(["DEPLOY", "OTHER"], run("pull_request", "feature"))
    message = str(caught.value)
    assert "secret DEPLOY is not set for github:Acme/Widgets" in message
    assert ("searched repo:github:acme/widgets, repo:acme/widgets, owner:github:acme, "
            "owner:acme, global") in message
    assert "repo:acme/widgets allows branches main; events push" in message
    assert "secret OTHER" in message and "ciadm secret set" in message
    assert not caught.value.infrastructure and VALUE not in message


async def test_refused_values_names_and_filters(store: SecretStore) -> None:
    scope = parse_scope("global")
    for name, value, kwargs, match in [
            ("SHORT", "abc", {}, "shorter than 4"), ("SHORT", "  ab \n", {}, "shorter than 4"),
            ("1BAD", VALUE, {}, "not a secret name"), ("BAD-NAME", VALUE, {}, "not a secret name"),
            ("OK", VALUE, {"events": ["deploy"]}, "unknown event"),
            ("OK", VALUE, {"branches": [""]}, "branch patterns")]:
        with pytest.raises(InvalidSecret, match=match):
            await store.set(scope, name, value, set_by="t", **kwargs)
    assert await store.list() == []


async def test_rotation_moves_every_secret_to_the_newest_key(
        orchestrator_factory: Factory, tmp_path: Path) -> None:
    k1, k2 = key_file(tmp_path, "k1"), key_file(tmp_path, "k2")
    old = (await orchestrator_factory(secret_keys=[k1])).orchestrator.secret_store
    for i in range(3):
        await old.set(parse_scope(f"repo:acme/r{i}"), "S", f"value-number-{i}", set_by="t")
    # Without k1 the rows name the key they need.
    only_new = (await orchestrator_factory(secret_keys=[k2])).orchestrator.secret_store
    with pytest.raises(SecretsUnavailable, match="key 'k1', which this orchestrator does not "
                                                 r"have \(configured: k2\)"):
        await only_new.for_job(["S"], run(repo=REPO.model_copy(update={"name": "r0"})))
    with pytest.raises(MissingKey, match="'k1'"):
        await only_new.rotate(by="t")
    both = (await orchestrator_factory(secret_keys=[k1, k2])).orchestrator.secret_store
    await both.set(parse_scope("global"), "NEW", "already-under-k2", set_by="t")
    assert await both.rotate(by="t") == (3, 1)
    assert await both.rotate(by="t") == (0, 4)
    assert {r["key_id"] for r in await both.db.pool.fetch("SELECT key_id FROM secrets")} == {"k2"}
    for i in range(3):
        repo = REPO.model_copy(update={"name": f"r{i}"})
        assert await only_new.for_job(["S"], run(repo=repo)) == {"S": f"value-number-{i}"}
    # A tampered row fails loudly, naming the secret and the key.
    await both.db.pool.execute("UPDATE secrets SET nonce = '\\x000000000000000000000000'")
    with pytest.raises(SecretsUnavailable, match=r"secret S \(repo:acme/r0\) does not decrypt "
                                                 "with key 'k2'"):
        await both.for_job(["S"], run(repo=REPO.model_copy(update={"name": "r0"})))


class CountingBackend(LocalBackend):
    provisioned: list[str] = []

    async def provision(self, spec: VMSpec) -> VM:
        CountingBackend.provisioned.append(spec.job_id)
        return await super().provision(spec)


WORKFLOW = '''
workflow {
    job id="deploy" runs_on="local" {
        secrets "DEPLOY_KEY"
        step name="use" run="test \\"$DEPLOY_KEY\\" = deploy-key-value-9f8e7d && echo got=$DEPLOY_KEY"
    }
}'''


async def _harness(orchestrator_factory: Factory, tmp_path: Path) -> Harness:
    CountingBackend.provisioned = []
    return await orchestrator_factory(secret_keys=[key_file(tmp_path, "k1")],
                                      backend_class=CountingBackend)


async def test_a_production_job_gets_its_secret_from_the_store(
        orchestrator_factory: Factory, tmp_path: Path) -> None:
    harness = await _harness(orchestrator_factory, tmp_path)
    store = harness.orchestrator.secret_store
    await store.set(parse_scope(f"repo:local/{harness.source.name}"), "DEPLOY_KEY", VALUE,
                    set_by="t", branches=["main"])
    summary = await harness.run(WORKFLOW)
    assert summary.state == "success", summary
    log = await harness.logs(summary.jobs[0].job_id)
    assert b"got=***" in log and VALUE.encode() not in log
    # An untrusted run gets nothing (and is not failed for it).
    untrusted = await harness.run(WORKFLOW, trusted=False)
    assert untrusted.jobs[0].state == JobState.FAILURE
    assert "failed with exit code 1" in untrusted.jobs[0].message


async def test_a_missing_secret_fails_the_job_before_its_machine_exists(
        orchestrator_factory: Factory, tmp_path: Path) -> None:
    harness = await _harness(orchestrator_factory, tmp_path)
    await harness.orchestrator.secret_store.set(
        parse_scope(f"repo:local/{harness.source.name}"), "DEPLOY_KEY", VALUE, set_by="t",
        branches=["main"])
    summary = await harness.run(WORKFLOW, branch="feature", ref="refs/heads/feature")
    job = summary.jobs[0]
    assert job.state == JobState.FAILURE
    assert "secret DEPLOY_KEY is not set for local:local/src" in job.message
    assert "searched repo:local:local/src" in job.message and "global" in job.message
    assert "allows branches main" in job.message and VALUE not in job.message
    assert str(job.job_id) not in CountingBackend.provisioned


def test_secret_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOLSTICE_ORCHESTRATOR__SECRET_KEYS", "old=file:/etc/k/old, new=env:KEY_NEW")
    config = load_config(OrchestratorConfig, path=None, section="orchestrator", cli={})
    assert [(k.id, k.file, k.env) for k in config.secret_keys] == [
        ("old", Path("/etc/k/old"), None), ("new", None, "KEY_NEW")]
    monkeypatch.setenv("SOLSTICE_ORCHESTRATOR__SECRET_KEYS", "old=/etc/k/old")
    with pytest.raises(ConfigError, match="ID=file:PATH"):
        load_config(OrchestratorConfig, path=None, section="orchestrator", cli={})
