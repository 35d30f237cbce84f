"""The integrations' real entry points: start on the real PostgreSQL and RabbitMQ, serve, and
on SIGTERM finish, close the broker and the pool, and exit 0."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def _forge_env(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    return ["--insecure-no-signature"], {
        "SOLSTICE_FORGE_INTEGRATION__SITES__FORGEJO__URL": "http://127.0.0.1:9"}


def _github_env(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return [], {"SOLSTICE_GITHUB_INTEGRATION__APP_ID": "1",
                "SOLSTICE_GITHUB_INTEGRATION__PRIVATE_KEY_PATH": str(pem),
                "SOLSTICE_GITHUB_INTEGRATION__WEBHOOK_SECRET": "entry-point-secret"}


@pytest.mark.parametrize(("module", "setup"), [("forge_integration", _forge_env),
                                               ("github_integration", _github_env)])
async def test_serves_then_stops_cleanly_on_sigterm(
        module: str, setup, pg_dsn: str, amqp_url: str, broker_prefix: str,
        tmp_path: Path) -> None:
    args, extra = setup(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    env |= extra | {f"SOLSTICE_{module.upper()}__BROKER_PREFIX": broker_prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"{module}.main", *args, "--listen-port", "0",
        "--database-url", pg_dsn, "--amqp-url", amqp_url, env=env,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        while not (found := re.search(r"msg=ready url=(\S+)", lines[-1] if lines else "")):
            line = (await proc.stderr.readline()).decode()
            assert line, f"exited {await proc.wait()}: {''.join(lines)}"
            lines.append(line)
    async with httpx.AsyncClient(base_url=found.group(1)) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        unsigned = await client.post(f"/webhooks/{'forgejo' if module == 'forge_integration' else 'github'}",
                                     content=b"{}")
        # The forge integration runs unsigned here (and then has no event header to act on);
        # the GitHub App always wants a signature.
        assert unsigned.status_code == (400 if module == "forge_integration" else 401)
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        rest = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0, rest
    assert "msg=stopped" in rest
    assert "entry-point-secret" not in "".join(lines) + rest
