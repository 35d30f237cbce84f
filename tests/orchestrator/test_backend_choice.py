"""`solstice-orchestrator --backend NAME` builds that backend from the same config file."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from orchestrator.backends.bhyve import BhyveBackend
from orchestrator.backends.local import LocalBackend
from orchestrator.backends.qemu import QemuBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.main import make_backend


def test_local_needs_to_be_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without any isolation"):
        make_backend(OrchestratorConfig(state_dir=tmp_path, backend="local"))
    allowed = OrchestratorConfig(state_dir=tmp_path, backend="local", allow_local_backend=True)
    assert isinstance(make_backend(allowed), LocalBackend)


def test_bhyve_reads_its_table_of_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "solstice.toml"
    config_file.write_text(
        '[orchestrator]\nbackend = "bhyve"\n'
        '[orchestrator.bhyve]\nclone_parent = "rpool/solstice/jobs"\nlink = "stub0"\n'
        '[orchestrator.bhyve.labels.omnios]\ndataset = "rpool/solstice/images/omnios"\n')
    backend = make_backend(OrchestratorConfig(state_dir=tmp_path, backend="bhyve"),
                           str(config_file))
    assert isinstance(backend, BhyveBackend)
    assert backend.settings.labels["omnios"].dataset == "rpool/solstice/images/omnios"


def test_bhyve_without_its_settings_is_a_config_error(tmp_path: Path) -> None:
    config_file = tmp_path / "solstice.toml"
    config_file.write_text('[orchestrator]\nbackend = "bhyve"\n')
    with pytest.raises(ConfigError, match="bhyve"):
        make_backend(OrchestratorConfig(state_dir=tmp_path, backend="bhyve"), str(config_file))


def test_qemu_reads_its_table_of_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "solstice.toml"
    config_file.write_text(
        '[orchestrator]\nbackend = "qemu"\n'
        f'[orchestrator.qemu]\nstate_dir = "{tmp_path}/vms"\n'
        '[orchestrator.qemu.labels.linux]\nimage = "/images/debian.qcow2"\nkernel = "/images/vmlinuz"\n')
    backend = make_backend(OrchestratorConfig(state_dir=tmp_path, backend="qemu"),
                           str(config_file))
    assert isinstance(backend, QemuBackend)
    assert str(backend.settings.labels["linux"].image) == "/images/debian.qcow2"


def test_qemu_without_its_settings_is_a_config_error(tmp_path: Path) -> None:
    config_file = tmp_path / "solstice.toml"
    config_file.write_text('[orchestrator]\nbackend = "qemu"\n')
    with pytest.raises(ConfigError, match="qemu"):
        make_backend(OrchestratorConfig(state_dir=tmp_path, backend="qemu"), str(config_file))


def test_unknown_backend_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_backend(OrchestratorConfig(state_dir=tmp_path, backend="firecracker"))
    assert "bhyve" in str(info.value) and "qemu" in str(info.value)
