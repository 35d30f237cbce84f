"""The secret store in standalone mode: the real `solstice-orchestrator` process on its embedded
PostgreSQL, managed with the real `ciadm`; and a key it cannot use stops it at start."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.main import main as orchestrator_main
from tests.orchestrator.conftest import ADMIN_TOKEN
from tests.orchestrator.test_secret_store import key_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ciadm(address: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciadm.main", "--orchestrator", address,
                           "--token", ADMIN_TOKEN, *args], input=stdin.decode(),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def state() -> Iterator[Path]:
    """The state directory. Not under pytest's tmp_path: the embedded PostgreSQL runs as
    another user and must traverse it, and pytest keeps its base directory 0700."""
    path = Path(tempfile.mkdtemp(prefix="secrets-standalone-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_standalone_orchestrator_keeps_secrets_in_its_embedded_database(
        tmp_path: Path, state: Path) -> None:
    key = key_file(tmp_path, "local-1")
    admin = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    env.update(SOLSTICE_ORCHESTRATOR__SECRET_KEYS=f"local-1=file:{key['file']}",
               SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN=ADMIN_TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.main", "--standalone", "--allow-local-backend",
         "--state-dir", str(state), "--admin-listen", admin,
         "--grpc-listen", "127.0.0.1:0", "--host-name", "standalone-secrets"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while (listed := ciadm(admin, "secret", "list")).returncode != 0:
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()[-1500:]
            assert time.monotonic() < deadline, listed.stderr
            time.sleep(0.5)
        assert listed.stdout.strip() == "no secrets"
        made = ciadm(admin, "secret", "set", "owner:acme", "API_TOKEN", stdin=b"standalone-value\n")
        assert made.returncode == 0, made.stderr
        listed = ciadm(admin, "secret", "list")
        assert "owner:acme" in listed.stdout and "key local-1" in listed.stdout
        assert "standalone-value" not in listed.stdout
    finally:
        proc.terminate()
        proc.wait(60)


def test_an_unusable_key_stops_the_orchestrator_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in os.environ if n.startswith("SOLSTICE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SOLSTICE_ORCHESTRATOR__ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("SOLSTICE_ORCHESTRATOR__SECRET_KEYS", f"gone=file:{tmp_path}/missing")
    assert orchestrator_main(["--standalone", "--allow-local-backend"]) == 2
    err = capsys.readouterr().err
    assert "cannot read secret key 'gone'" in err and "hint:" in err
