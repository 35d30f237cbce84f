from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from common.config import load_config
from common.errors import ConfigError
from orchestrator.config import OrchestratorConfig


class Database(BaseModel):
    url: str = "embedded"
    pool: int = 4


class Settings(BaseModel):
    grpc_port: int = 7700
    database: Database = Database()


def test_layers_override_in_order(tmp_path: Path) -> None:
    cfg = tmp_path / "solstice.toml"
    cfg.write_text('[orchestrator]\ngrpc_port = 8000\n[orchestrator.database]\nurl = "file"\npool = 9\n')
    env = {"SOLSTICE_ORCHESTRATOR__DATABASE__URL": "env", "SOLSTICE_OTHER__X": "ignored"}
    got = load_config(Settings, path=cfg, section="orchestrator", environ=env, cli={"grpc_port": 9000})
    assert got.grpc_port == 9000
    assert got.database.url == "env"
    assert got.database.pool == 9


def test_defaults_when_nothing_given() -> None:
    assert load_config(Settings, environ={}) == Settings()


def test_absent_cli_flag_does_not_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("grpc_port = 8001\n")
    assert load_config(Settings, path=cfg, environ={}, cli={"grpc_port": None}).grpc_port == 8001


def test_bad_values_and_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="grpc_port"):
        load_config(Settings, environ={"SOLSTICE_GRPC_PORT": "lots"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Settings, path=tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("grpc_port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Settings, path=bad, environ={})


class StrictDatabase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "embedded"


class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grpc_port: int = 7700
    database: StrictDatabase = StrictDatabase()


def test_misspelt_keys_are_named_with_the_likely_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('grpc_prot = 1\n[database]\nulr = "x"\nzzz = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(StrictSettings, path=cfg, environ={})
    message = str(caught.value)
    assert "grpc_prot: unknown key (did you mean 'grpc_port'?)" in message
    assert "database.ulr: unknown key (did you mean 'url'?)" in message
    assert "database.zzz: unknown key" in message and "zzz: unknown key (" not in message


def test_orchestrator_refuses_an_unknown_key_but_keeps_the_backend_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "solstice.toml"
    cfg.write_text('[orchestrator]\nlease_tll = 30\n[orchestrator.bhyve]\nlink = "stub0"\n')
    with pytest.raises(ConfigError, match="lease_tll: unknown key \\(did you mean 'lease_ttl'\\?\\)"):
        load_config(OrchestratorConfig, path=cfg, section="orchestrator", environ={})
    cfg.write_text('[orchestrator]\nlease_ttl = 30\n[orchestrator.bhyve]\nlink = "stub0"\n')
    config = load_config(OrchestratorConfig, path=cfg, section="orchestrator", environ={})
    assert config.lease_ttl == 30 and config.bhyve == {"link": "stub0"}
