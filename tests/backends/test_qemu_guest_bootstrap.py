"""The golden image's NoCloud reader (images/linux/rootfs/usr/local/sbin/solstice-bootstrap)
against the user-data the backends really write (`orchestrator.backends.cloudinit`).

The boot itself (finding and mounting the seed) runs in tests/vm; here, on the host, the part
that must agree with cloud-init: parsing, `write_files`, `runcmd`, and refusing the rest.
"""
from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import stat
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.backends.base import RunnerBootstrap
from orchestrator.backends.cloudinit import RUNNER_CONFIG_PATH, runner_toml, user_data

SCRIPT = Path(__file__).resolve().parents[2] / "images/linux/rootfs/usr/local/sbin/solstice-bootstrap"


@pytest.fixture(scope="module")
def reader() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("solstice_bootstrap", str(SCRIPT))
    spec = importlib.util.spec_from_loader("solstice_bootstrap", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_backends_user_data_yields_the_exact_runner_config(reader: ModuleType, tmp_path: Path) -> None:
    # Quotes, backslashes, a newline and non-ASCII: JSON-quoted in YAML must come back intact.
    bootstrap = RunnerBootstrap(orchestrator_url="10.0.2.100:7700", job_id="j-1",
                                token='t"o\\k\nén')
    config = reader.parse_user_data(user_data(bootstrap))
    [entry] = config["write_files"]
    assert entry["path"] == RUNNER_CONFIG_PATH
    assert entry["content"] == runner_toml(bootstrap)
    target = tmp_path / "etc/solstice/runner.toml"
    reader.write_file({**entry, "path": str(target)})
    assert target.read_text() == runner_toml(bootstrap)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not list(target.parent.glob("*.solstice-tmp"))  # written atomically
    [command] = config["runcmd"]
    assert "systemctl start --no-block solstice-runner" in command[-1]


def test_write_files_encodings_and_append(reader: ModuleType, tmp_path: Path) -> None:
    target = tmp_path / "deep/dir/file"
    reader.write_file({"path": str(target), "content": base64.b64encode(b"\x00bin").decode(),
                       "encoding": "b64", "permissions": "0640"})
    assert target.read_bytes() == b"\x00bin"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    reader.write_file({"path": str(target), "content": "more", "append": True,
                       "permissions": "0640"})
    assert target.read_bytes() == b"\x00binmore"
    with pytest.raises(SystemExit, match="encoding 'gz' is not supported"):
        reader.write_file({"path": str(tmp_path / "x"), "content": "", "encoding": "gz"})


def test_runcmd_runs_lists_as_argv_and_strings_with_sh(reader: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reader.run_command(["sh", "-c", f"echo list > {out}"])
    reader.run_command(f"echo string >> {out}")
    assert out.read_text() == "list\nstring\n"
    with pytest.raises(subprocess.CalledProcessError):  # a failing runcmd fails the boot
        reader.run_command(["false"])


@pytest.mark.parametrize("text, message", [
    ("#!/bin/sh\necho hi\n", "not #cloud-config"),
    ("#cloud-config\npackages: [vim]\nruncmd: []\n", r"keys not supported: \['packages'\]"),
])
def test_user_data_it_cannot_honour_is_refused(reader: ModuleType, text: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        reader.parse_user_data(text)
