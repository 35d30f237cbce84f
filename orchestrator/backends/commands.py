"""Run a host command from a backend: always with a timeout, stderr kept, failures as BackendError.

Every backend shells out (`zfs`, `zoneadm`, `qemu-img`, ...). This module is the one way to do
it, so that no command can hang a job and every failure reaches the job's `error` with the
command line and what the tool said:

    result = await run_command(["zfs", "list", "-H", "-o", "name"], timeout=30)
    names = result.stdout.splitlines()

The child runs in its own session so a timeout (or cancellation of the awaiting task) kills
it and everything it spawned, not just the direct child.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.backends.base import BackendError

# How much of a tool's stderr goes into an error message; the tail is what names the fault.
_STDERR_TAIL = 2000


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and how it exited."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def command(self) -> str:
        return format_command(self.argv)


def format_command(argv: Sequence[str]) -> str:
    """`argv` as a shell-quoted line, for messages."""
    return shlex.join(argv)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]


class CommandFailed(BackendError):
    """A command exited non-zero; `result` has its exit status, stdout and stderr."""

    def __init__(self, result: CommandResult) -> None:
        said = _tail(result.stderr) or _tail(result.stdout) or "(no output)"
        super().__init__(
            f"`{result.command}` failed with exit status {result.returncode}: {said}",
            hint="see the tool's message above; the host may need operator attention",
        )
        self.result = result


class CommandTimedOut(BackendError):
    """A command did not finish within its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stderr: str) -> None:
        detail = f"; stderr so far: {_tail(stderr)}" if stderr.strip() else ""
        super().__init__(
            f"`{format_command(argv)}` did not finish within {timeout:g}s and was killed{detail}",
            hint="the host may be overloaded or the tool stuck; raise the backend's command "
            "timeout only if the operation is known to be slow",
        )
        self.argv = tuple(argv)
        self.timeout = timeout


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> CommandResult:
    """Run `argv` (no shell) and return its result once it exits.

    Raises `CommandTimedOut` if it runs longer than `timeout` seconds (the whole process group
    is killed), `CommandFailed` if it exits non-zero and `check` is true, and `BackendError`
    if it cannot be started at all (not installed, not executable). A child that leaves a
    daemon holding its stdout/stderr open counts as still running: daemons must detach.
    """
    argv = tuple(str(a) for a in argv)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise BackendError(
            f"cannot run `{format_command(argv)}`: {exc.strerror or exc}",
            hint=f"is `{argv[0]}` installed and on the orchestrator's PATH?",
        ) from exc

    stderr_chunks: list[bytes] = []

    async def collect() -> tuple[bytes, bytes]:
        async def read_stderr() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.read(65536):
                stderr_chunks.append(chunk)

        async def read_stdout() -> bytes:
            assert process.stdout is not None
            return await process.stdout.read()

        if input is not None:
            assert process.stdin is not None
            process.stdin.write(input)
            try:
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the tool exited without reading its input; its exit status says why
            process.stdin.close()
        out, _ = await asyncio.gather(read_stdout(), read_stderr())
        await process.wait()
        return out, b"".join(stderr_chunks)

    try:
        out, err = await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        raise CommandTimedOut(argv, timeout, b"".join(stderr_chunks).decode(errors="replace")) from None
    except BaseException:
        # Cancelled (job cancelled, orchestrator shutting down): never leave the tool running.
        _kill_group(process)
        raise

    assert process.returncode is not None
    result = CommandResult(
        argv=argv,
        returncode=process.returncode,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result
