"""docs/config.md names every key of every service's settings (and of the backends' tables)."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from common.forge.config import InboxSettings
from forge_integration.config import ForgeIntegrationConfig, Site
from forge_integration.config import RepoSettings as ForgeRepo
from github_integration.config import GitHubIntegrationConfig
from github_integration.config import RepoSettings as GitHubRepo
from orchestrator.backends.bhyve import BhyveSettings, LabelImage
from orchestrator.backends.bhyve_network import BhyveNetwork
from orchestrator.backends.qemu import GuestForward, QemuLabel, QemuLimits, QemuSettings
from orchestrator.config import OrchestratorConfig
from workflow_runner.config import RunnerSettings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
MODELS = [OrchestratorConfig, BhyveSettings, BhyveNetwork, LabelImage, QemuSettings, QemuLabel, QemuLimits,
          GuestForward, ForgeIntegrationConfig, Site, ForgeRepo, GitHubIntegrationConfig,
          GitHubRepo, InboxSettings, RunnerSettings]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.__module__}.{m.__name__}")
def test_every_key_is_documented(model: type[BaseModel]) -> None:
    missing = [name for name in model.model_fields if f"`{name}`" not in DOC]
    assert not missing, f"docs/config.md does not document {model.__name__}: {missing}"


def test_orchestrator_environment_variables_are_spelled_out() -> None:
    for name in OrchestratorConfig.model_fields:
        assert f"SOLSTICE_ORCHESTRATOR__{name.upper()}" in DOC, name
