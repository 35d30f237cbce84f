"""`run_command`: timeouts kill the whole group, stderr reaches the error, input is fed."""
from __future__ import annotations

import asyncio
import sys
import time

import pytest

from orchestrator.backends.base import BackendError
from orchestrator.backends.commands import CommandFailed, CommandTimedOut, run_command


async def test_success_returns_output() -> None:
    script = "import sys; print('out'); print('err', file=sys.stderr)"
    result = await run_command([sys.executable, "-c", script], timeout=10)
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


async def test_failure_names_command_and_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        await run_command(
            [sys.executable, "-c", "import sys; sys.exit(\"cannot open 'rpool/x': dataset does not exist\")"],
            timeout=10,
        )
    message = str(info.value)
    assert "exit status 1" in message
    assert "cannot open 'rpool/x': dataset does not exist" in message
    assert sys.executable in message
    assert info.value.result.returncode == 1


async def test_unchecked_failure_returns_result() -> None:
    result = await run_command([sys.executable, "-c", "raise SystemExit(3)"], timeout=10, check=False)
    assert result.returncode == 3


async def test_timeout_kills_process_group() -> None:
    # The child spawns a grandchild that holds the pipes open; both must die at the timeout.
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('started', file=sys.stderr, flush=True); time.sleep(60)"
    )
    began = time.monotonic()
    with pytest.raises(CommandTimedOut) as info:
        await run_command([sys.executable, "-c", script], timeout=1.0)
    assert time.monotonic() - began < 5
    assert "did not finish within 1s" in str(info.value)
    assert "started" in str(info.value)


async def test_missing_executable_is_backend_error() -> None:
    with pytest.raises(BackendError) as info:
        await run_command(["/nonexistent/zoneadm", "list"], timeout=5)
    assert "/nonexistent/zoneadm" in str(info.value)


async def test_input_is_fed() -> None:
    result = await run_command([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
                               timeout=10, input=b"create -b\n")
    assert result.stdout == "CREATE -B\n\n"


async def test_cancellation_kills_child(tmp_path) -> None:
    marker = tmp_path / "pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    task = asyncio.create_task(run_command([sys.executable, "-c", script], timeout=60))
    for _ in range(100):
        if marker.exists() and marker.read_text():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(marker.read_text())
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("child still running after cancellation")
