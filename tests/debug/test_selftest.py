"""`solstice-orchestrator selftest` as an operator runs it, on the local backend (real
Postgres), and its diagnosis when the runner never calls in."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.selftest import selftest


def test_selftest_passes_on_the_local_backend(pg_dsn: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.main", "selftest", "--backend", "local",
         "--allow-local-backend", "--database-url", pg_dsn, "--timeout", "60"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "SOLSTICE_ORCHESTRATOR__STATE_DIR": str(tmp_path),
             "SOLSTICE_ORCHESTRATOR__CAPACITY": "local=1",
             "SOLSTICE_ORCHESTRATOR__GRPC_LISTEN": "127.0.0.1:0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("provision", "boot", "runner call-in", "job", "log and artifact",
                  "teardown", "nothing left behind"):
        assert f"ok    {stage}" in proc.stdout, proc.stdout
    assert "selftest passed on backend local" in proc.stdout
    assert list((tmp_path / "machines").iterdir()) == []


class SilentGuest(LocalBackend):
    """A machine that boots but whose runner never reaches the orchestrator."""

    async def start(self, vm, bootstrap) -> None:
        await super().start(vm, bootstrap.__class__(
            orchestrator_url="127.0.0.1:9", job_id=bootstrap.job_id, token=bootstrap.token))


async def test_selftest_explains_a_runner_that_never_called_in(pg_dsn: str,
                                                                tmp_path: Path) -> None:
    config = OrchestratorConfig(state_dir=tmp_path, database_url=pg_dsn, backend="local",
                                allow_local_backend=True, grpc_listen="127.0.0.1:0",
                                capacity={"local": 1}, boot_timeout=3)
    lines: list[str] = []
    ok = await selftest(config, SilentGuest(tmp_path / "machines"), "local", 60, lines.append)
    text = "\n".join(lines)
    assert not ok
    assert "FAIL  runner call-in" in text
    assert "the runner never called in: the guest cannot reach 127.0.0.1:" in text
    assert "check `grpc_advertise`" in text and "selftest FAILED" in text
    assert list((tmp_path / "machines").iterdir()) == []
