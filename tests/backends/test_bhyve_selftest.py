"""`solstice-orchestrator selftest` on the bhyve backend over the fake illumos tools (the fake
`zoneadm boot` starts the real runner from the cloud-init user-data): it passes and leaves
nothing, and a boot failure is diagnosed."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.backends.bhyve import BhyveBackend, BhyveSettings, LabelImage
from orchestrator.config import OrchestratorConfig
from orchestrator.selftest import selftest
from tests.fakes.illumos.fixtures import CLONE_PARENT, IMAGE, LINK, FakeIllumos

pytestmark = pytest.mark.slow


def _setup(tmp_path: Path, fake: FakeIllumos, pg_dsn: str) -> tuple[OrchestratorConfig,
                                                                      BhyveBackend]:
    settings = BhyveSettings(
        clone_parent=CLONE_PARENT, zone_root=str(fake.zone_root), link=LINK,
        work_dir=str(tmp_path / "bhyve"), zfs="command", watch_interval_seconds=0.5,
        labels={"omnios": LabelImage(dataset=IMAGE, vcpus=2, ram_mb=2048, disk_gb=20)})
    config = OrchestratorConfig(state_dir=tmp_path / "state", database_url=pg_dsn,
                                backend="bhyve", grpc_listen="127.0.0.1:0",
                                capacity={"omnios": 1}, boot_timeout=60)
    return config, BhyveBackend(settings)


async def test_selftest_passes_on_the_bhyve_fakes(pg_dsn: str, tmp_path: Path,
                                                 fake_illumos: FakeIllumos) -> None:
    config, backend = _setup(tmp_path, fake_illumos, pg_dsn)
    lines: list[str] = []
    assert await selftest(config, backend, "omnios", 120, lines.append), "\n".join(lines)
    text = "\n".join(lines)
    for stage in ("provision", "boot", "runner call-in", "job", "log and artifact",
                  "teardown", "nothing left behind"):
        assert f"ok    {stage}" in text, text
    fake_illumos.assert_empty()


async def test_selftest_diagnoses_a_boot_failure(pg_dsn: str, tmp_path: Path,
                                                 fake_illumos: FakeIllumos) -> None:
    config, backend = _setup(tmp_path, fake_illumos, pg_dsn)
    fake_illumos.update(boot="vm_create failed: Cannot allocate memory")
    lines: list[str] = []
    assert not await selftest(config, backend, "omnios", 120, lines.append)
    text = "\n".join(lines)
    assert "FAIL  provision / boot" in text
    assert "zoneadm -z" in text and "Cannot allocate memory" in text
    assert "selftest FAILED on backend bhyve" in text
    fake_illumos.assert_empty()
