"""The `fake_illumos` fixture: the fake illumos tools first on PATH over a fresh, seeded state.

A test module imports the fixture (`from tests.fakes.illumos.fixtures import fake_illumos`).
The world it seeds: pool `tank` with a golden bhyve image zvol `tank/images/omnios` (8 GiB),
the per-job clone parent `tank/jobs`, a physical link `net0` and an etherstub `stub0`, and a
zone root directory. Whatever a test leaves running (a guest runner) is killed at teardown.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.fakes.illumos import fakeillumos

FAKES_DIR = Path(__file__).resolve().parent
POOL = "tank"
IMAGE = "tank/images/omnios"
IMAGE_SIZE = 8 << 30
CLONE_PARENT = "tank/jobs"
LINK = "net0"
ETHERSTUB = "stub0"
SEEDED_DATASETS = {"tank", "tank/images", IMAGE, CLONE_PARENT}


@dataclass
class FakeIllumos:
    """Handle on one test's fake illumos host."""

    state_dir: Path
    zone_root: Path
    env: dict[str, str]

    def state(self) -> dict[str, Any]:
        path = self.state_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else fakeillumos.empty_state()

    def update(self, **faults: Any) -> None:
        """Set (or with None, clear) entries of the fault table: boot=..., hang=[...]."""
        with fakeillumos.locked_state() as state:
            for key, value in faults.items():
                if value is None:
                    state["faults"].pop(key, None)
                else:
                    state["faults"][key] = value

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a fake tool as a test would on illumos (no check; read returncode/stderr)."""
        return subprocess.run([tool, *args], env=self.env, capture_output=True, text=True,
                              timeout=30)

    def leaked(self) -> dict[str, Any]:
        """What exists beyond the seeded world: zones, VNICs, datasets, guest processes."""
        state = self.state()
        datasets = {n for n, d in state["datasets"].items() if d["type"] != "snapshot"}
        return {
            "zones": sorted(state["zones"]),
            "vnics": sorted(n for n, link in state["links"].items() if link["class"] == "vnic"),
            "datasets": sorted(datasets - SEEDED_DATASETS),
            "guests": sorted(z["runner_pid"] for z in state["zones"].values() if z.get("runner_pid")),
            "zonepaths": sorted(p.name for p in self.zone_root.iterdir()),
        }

    def assert_empty(self) -> None:
        empty = {"zones": [], "vnics": [], "datasets": [], "guests": [], "zonepaths": []}
        assert self.leaked() == empty


def seed(state: dict[str, Any]) -> None:
    fakeillumos.zfs_create(state, POOL)
    fakeillumos.zfs_create(state, "tank/images")
    fakeillumos.zfs_create(state, IMAGE, volsize=str(IMAGE_SIZE))
    fakeillumos.zfs_create(state, CLONE_PARENT)
    state["links"][LINK] = {"class": "phys", "over": ""}
    state["links"][ETHERSTUB] = {"class": "etherstub", "over": ""}


@pytest.fixture
def fake_illumos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIllumos]:
    state_dir = tmp_path / "illumos-state"
    zone_root = tmp_path / "zones"
    zone_root.mkdir()
    # The fakes are `#!/usr/bin/env -S python3 -S` scripts (stdlib only; skipping site saves
    # startup time): this interpreter's directory comes next on PATH so they, and the runner
    # they boot, run with the test's Python.
    path = os.pathsep.join([str(FAKES_DIR), str(Path(sys.executable).parent), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv(fakeillumos.STATE_ENV, str(state_dir))
    with fakeillumos.locked_state() as state:
        seed(state)
    fake = FakeIllumos(state_dir=state_dir, zone_root=zone_root, env=dict(os.environ))
    yield fake
    for zone in fake.state()["zones"].values():
        fakeillumos.kill_guest(zone.get("runner_pid"))


@pytest.fixture
def fake_libzfs_core(fake_illumos: FakeIllumos, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fake pyzfs module, importable as `libzfs_core` for the test, over the same state."""
    from tests.fakes.illumos.pyzfs import libzfs_core

    monkeypatch.setitem(sys.modules, "libzfs_core", libzfs_core)
    monkeypatch.setitem(sys.modules, "libzfs_core.exceptions", libzfs_core.exceptions)
    return libzfs_core
