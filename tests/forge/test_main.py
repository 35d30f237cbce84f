"""The real entry point: starts, serves, and on SIGTERM stops cleanly (exit 0)."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import httpx


async def test_serves_then_stops_cleanly_on_sigterm(pg_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    env["SOLSTICE_FORGE_INTEGRATION__SITES__FORGEJO__URL"] = "http://127.0.0.1:9"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "forge_integration.main", "--insecure-no-signature",
        "--listen-port", "0", "--database-url", pg_dsn, env=env,
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
        unknown = await client.post("/webhooks/gitea", content=b"{}")
        assert unknown.status_code == 404  # only configured forges get an endpoint
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        rest = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0, rest
    assert "msg=stopped" in rest and "unsigned webhooks" in "".join(lines)
