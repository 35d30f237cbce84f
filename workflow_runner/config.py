"""The runner's bootstrap: where the orchestrator is, which job to run, with which token.

Sources, lowest precedence first: the TOML file (`--config`, else `$SOLSTICE_RUNNER_CONFIG`,
else `/etc/solstice/runner.toml` when it exists; cloud-init writes that one), then the
environment (`SOLSTICE_ORCHESTRATOR_URL`, `SOLSTICE_JOB_ID`, `SOLSTICE_TOKEN`,
`SOLSTICE_WORKSPACE`, ...), then command-line flags.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from common.config import load_config

DEFAULT_CONFIG_PATH = Path("/etc/solstice/runner.toml")
CONFIG_PATH_ENV = "SOLSTICE_RUNNER_CONFIG"


class RunnerSettings(BaseModel):
    """Everything `solstice-runner` reads at start."""

    orchestrator_url: str = Field(min_length=1)  # host:port, or grpcs://host:port for TLS
    job_id: str = Field(min_length=1)
    token: str = Field(min_length=1, repr=False)
    # Where the job's tree lives; empty means a fresh temporary directory under /var/tmp,
    # removed when the runner ends.
    workspace: str = ""
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # SIGTERM first, SIGKILL to the whole process group after this many seconds.
    kill_grace_seconds: float = Field(default=5.0, ge=0)
    # How long the orchestrator may stay unreachable before the runner gives up.
    unreachable_timeout_seconds: float = Field(default=900.0, gt=0)
    # Log batching: a chunk leaves after this many milliseconds or this many bytes.
    log_flush_ms: int = Field(default=25, gt=0)
    log_chunk_bytes: int = Field(default=65536, ge=1024)
    # Logs beyond this many unacknowledged bytes in memory go to a spill file.
    log_memory_bytes: int = Field(default=64 * 1024 * 1024, ge=65536)
    log_level: str = "info"


def config_path(flag: str | None, environ: Mapping[str, str]) -> Path | None:
    """The bootstrap file to read, or None when only the environment and flags are used."""
    if flag:
        return Path(flag)
    if environ.get(CONFIG_PATH_ENV):
        return Path(environ[CONFIG_PATH_ENV])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_settings(
    *, config: str | None = None, cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunnerSettings:
    """Read the bootstrap from its three layers; raises `ConfigError` naming what is missing."""
    environ = os.environ if environ is None else environ
    path = config_path(config, environ)
    return load_config(RunnerSettings, path=path, cli=cli, environ=environ)
