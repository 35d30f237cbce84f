"""`solstice-orchestrator` flags: multi-host wiring, clear errors for bad combinations."""
from __future__ import annotations

import argparse
import os

import pytest

from common.errors import ConfigError
from orchestrator.config import OrchestratorConfig
from orchestrator.main import _parser, load, make_backend


def _load(*argv: str, env: dict[str, str] | None = None,
          monkeypatch: pytest.MonkeyPatch) -> OrchestratorConfig:
    for key in list(os.environ):
        if key.startswith("SOLSTICE_"):
            monkeypatch.delenv(key)
    # Without an admin token the orchestrator refuses to start (tests/security covers that).
    env = {"SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN": "cli-test-admin-token-0123456789", **(env or {})}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args: argparse.Namespace = _parser().parse_args(list(argv))
    return load(args)


def test_multi_host_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _load("--database-url", "postgresql://db/solstice", "--amqp-url", "amqp://mq/",
                   "--capacity", "illumos-stable=4, ubuntu-22.04=2", "--host-name", "ci-3",
                   "--blob-store-path", "/srv/solstice/blobs", monkeypatch=monkeypatch)
    assert config.capacity == {"illumos-stable": 4, "ubuntu-22.04": 2}
    assert str(config.blob_store.path) == "/srv/solstice/blobs"
    assert (config.database_url, config.amqp_url, config.host_name) == \
        ("postgresql://db/solstice", "amqp://mq/", "ci-3")


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _load("--capacity", "local=8", monkeypatch=monkeypatch, env={
        "SOLSTICE_ORCHESTRATOR__CAPACITY": "local=1", "SOLSTICE_ORCHESTRATOR__MAX_RETRIES": "5"})
    assert config.capacity == {"local": 8} and config.max_retries == 5


def test_standalone_ignores_urls_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _load("--standalone", monkeypatch=monkeypatch, env={
        "SOLSTICE_ORCHESTRATOR__DATABASE_URL": "postgresql://db/x",
        "SOLSTICE_ORCHESTRATOR__AMQP_URL": "amqp://mq/"})
    assert config.database_url is None and config.amqp_url is None


@pytest.mark.parametrize("argv, message", [
    (("--standalone", "--amqp-url", "amqp://mq/"), "cannot be combined"),
    (("--database-url", "postgresql://db/x"), "needs both"),
    (("--database-url", "postgresql://db/x", "--amqp-url", "amqp://mq/"),
     "blob store needs a path every host mounts"),
    (("--capacity", "illumos"), "not LABEL=SLOTS"),
    (("--capacity", "illumos=0"), "at least 1"),
])
def test_bad_combinations(argv: tuple[str, ...], message: str,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(*argv, monkeypatch=monkeypatch)


def test_local_backend_must_be_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="without any isolation"):
        make_backend(_load(monkeypatch=monkeypatch))
    with pytest.raises(ConfigError, match="unknown backend"):
        make_backend(_load("--backend", "vmware", monkeypatch=monkeypatch))
