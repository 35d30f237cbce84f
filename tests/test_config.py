from pathlib import Path

import pytest
from pydantic import BaseModel

from common.config import load_config
from common.errors import ConfigError


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
