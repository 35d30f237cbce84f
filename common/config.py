"""The one config loader: defaults < TOML file < environment `SOLSTICE_*` < CLI flags.

A service describes its settings as a pydantic model; `load_config` fills it from the four
layers. Nested keys map to environment variables with a double underscore:
`[database] url = ...` is `SOLSTICE_DATABASE__URL`.
"""
from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from common.errors import ConfigError

ENV_PREFIX = "SOLSTICE_"
CONFIG_PATH_ENV = "SOLSTICE_CONFIG"

M = TypeVar("M", bound=BaseModel)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {path} does not exist",
            hint=f"create it, or unset {CONFIG_PATH_ENV} / drop --config",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}",
                          hint="fix the line it names") from exc


def _from_env(environ: Mapping[str, str], section: str | None) -> dict[str, Any]:
    prefix = ENV_PREFIX + (f"{section.upper()}__" if section else "")
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix) or name == CONFIG_PATH_ENV:
            continue
        path = name[len(prefix):].lower().split("__")
        target = values
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = raw
    return values


def _describe(model: type[BaseModel], error: Any) -> str:
    """One validation error as `key.path: message`, naming the likely key for a misspelt one."""
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] != "extra_forbidden":
        return f"{where}: {error['msg']}"
    owner: Any = model  # the model the unknown key sits in, when the path leads to one
    for part in error["loc"][:-1]:
        field = owner.model_fields.get(part) if _is_model(owner) else None
        owner = field.annotation if field is not None else None
    known = list(owner.model_fields) if _is_model(owner) else []
    close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
    return f"{where}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def load_config(
    model: type[M],
    *,
    path: str | Path | None = None,
    section: str | None = None,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build `model` from its defaults, the TOML file, `SOLSTICE_*` variables and CLI flags.

    `section` picks a table of the TOML file (`[orchestrator]`) and scopes the environment
    (`SOLSTICE_ORCHESTRATOR__CAPACITY`); `cli` holds only the flags the user actually gave
    (None values are ignored so an absent flag never overrides the file).
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = path or environ.get(CONFIG_PATH_ENV)
    if path:
        document = _read_toml(Path(path))
        data = document.get(section, {}) if section else document
        if not isinstance(data, dict):
            raise ConfigError(f"[{section}] in {path} must be a table")
    data = _deep_merge(data, _from_env(environ, section))
    data = _deep_merge(data, {k: v for k, v in (cli or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(model, err) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}",
                          hint="check the config file, SOLSTICE_* variables and flags") from exc
