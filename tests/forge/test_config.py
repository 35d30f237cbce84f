"""Configuration: secret precedence, refusing to start without a secret."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from common.errors import ConfigError
from forge_integration.config import ForgeIntegrationConfig, RepoSettings, Site
from forge_integration.main import main

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
SITE = {"forgejo": Site(url="https://codeberg.org/", token=SecretStr("t"))}


def test_secret_precedence_repository_then_site_then_global() -> None:
    config = ForgeIntegrationConfig(
        webhook_secret=SecretStr("global"),
        sites={"forgejo": Site(url="https://f", webhook_secret=SecretStr("site")),
               "gitea": Site(url="https://g")},
        repos={"Acme/App": RepoSettings(webhook_secret=SecretStr("repo"))})
    assert config.secret_for("forgejo", "acme/app") == "repo"
    assert config.secret_for("forgejo", "acme/other") == "site"
    assert config.secret_for("gitea", "acme/other") == "global"
    assert config.secret_for("gitea", None) == "global"
    assert config.sites["forgejo"].api_url == "https://f/api/v1"


def test_approval_setting_per_repository() -> None:
    config = ForgeIntegrationConfig(sites=SITE, approval_for_untrusted=True,
                                    repos={"a/b": RepoSettings(approval_for_untrusted=False)})
    assert not config.approval_for("A/B") and config.approval_for("a/c")


def test_refuses_to_start_without_any_secret() -> None:
    with pytest.raises(ConfigError, match="no webhook secret"):
        ForgeIntegrationConfig(sites=SITE, amqp_url=AMQP).check()
    ForgeIntegrationConfig(sites=SITE, amqp_url=AMQP, insecure_no_signature=True).check()
    ForgeIntegrationConfig(sites=SITE, amqp_url=AMQP, repos={"a/b": RepoSettings(
        webhook_secret=SecretStr("s"))}).check()
    with pytest.raises(ConfigError, match="no forge configured"):
        ForgeIntegrationConfig(webhook_secret=SecretStr("s"), amqp_url=AMQP).check()


def test_refuses_to_start_without_a_broker() -> None:
    """Without RabbitMQ the runs would go to an in-process queue no orchestrator reads."""
    with pytest.raises(ConfigError, match="no amqp_url") as caught:
        ForgeIntegrationConfig(sites=SITE, insecure_no_signature=True).check()
    assert "--amqp-url" in caught.value.hint


def test_main_explains_the_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SOLSTICE_CONFIG", "SOLSTICE_FORGE_INTEGRATION__WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "solstice.toml"
    path.write_text('[forge_integration.sites.forgejo]\nurl = "https://codeberg.org"\n')
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no webhook secret configured" in err and "--insecure-no-signature" in err
    path.write_text('[forge_integration]\nlisten_port = "eighty"\n')
    assert main(["--config", str(path)]) == 2
    assert "listen_port" in capsys.readouterr().err
