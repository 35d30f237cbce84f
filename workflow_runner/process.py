"""Run one command in its own process group, stream its output, stop it on time or on cancel.

Every command (a git call, the setup script, a step) is a session leader (`start_new_session`),
so a timeout or a cancel reaches every process it started: SIGTERM to the group, SIGKILL to
whatever is left after the grace period. Output is read from two pipes as it comes, masked per
stream and handed to the `LogShipper`.

A background process a step leaves behind stays in the step's group; its output is still
shipped under that step until the job ends, when `ProcessGroups.kill_all` stops it. A process
that leaves the group on purpose (`setsid`, a daemon) is out of reach, as on any CI runner;
the VM's destruction ends it.
"""
from __future__ import annotations

import asyncio
import enum
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.masking import SecretMasker
from protos import runner_pb2
from workflow_runner.logs import LogShipper

READ_SIZE = 65536
# After the main process exited, wait this long for its pipes to close before moving on.
DRAIN_SECONDS = 0.5


class Ending(enum.Enum):
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Finished:
    ending: Ending
    exit_code: int  # 128+N when killed by signal N
    duration_ms: int


class ProcessGroups:
    """The process groups and pipe readers of one job, so none outlives the job."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._groups: list[int] = []
        self._readers: list[asyncio.Task[None]] = []

    async def terminate(self, pgid: int) -> None:
        """SIGTERM the group, then SIGKILL it if anything is left after the grace period."""
        if not _signal_group(pgid, signal.SIGTERM):
            return
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            if not _signal_group(pgid, 0):
                return
            await asyncio.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)

    async def kill_all(self, drain_timeout: float = 2.0) -> None:
        """Stop every group the job started and collect the last output of their readers."""
        await asyncio.gather(*(self.terminate(pgid) for pgid in self._groups))
        if self._readers:
            _, stuck = await asyncio.wait(self._readers, timeout=drain_timeout)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)

    async def run(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], step_index: int,
        shipper: LogShipper, masker: SecretMasker, deadline: float | None,
        cancel: asyncio.Event,
    ) -> Finished:
        """Run `argv` until it exits, `deadline` (loop time) passes or `cancel` is set."""
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        self._groups.append(proc.pid)
        readers = [
            asyncio.create_task(_pump(proc.stdout, masker, shipper, step_index, runner_pb2.STDOUT)),
            asyncio.create_task(_pump(proc.stderr, masker, shipper, step_index, runner_pb2.STDERR)),
        ]
        self._readers += readers
        try:
            ending = await _supervise(proc, deadline, cancel)
            if ending is not Ending.EXITED:
                await self.terminate(proc.pid)
            await proc.wait()
            await asyncio.wait(readers, timeout=DRAIN_SECONDS)
        except asyncio.CancelledError:
            await asyncio.shield(self.terminate(proc.pid))
            raise
        # Forget groups with no process left: only a live group pins its id, so a stale
        # id could later name somebody else's group.
        self._groups = [pgid for pgid in self._groups if _signal_group(pgid, 0)]
        code = proc.returncode
        assert code is not None
        return Finished(ending, code if code >= 0 else 128 - code,
                        int((time.monotonic() - started) * 1000))


async def _supervise(proc: asyncio.subprocess.Process, deadline: float | None,
                     cancel: asyncio.Event) -> Ending:
    waiter = asyncio.ensure_future(proc.wait())
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({waiter, cancelled}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        cancelled.cancel()
    if waiter in done:
        return Ending.EXITED
    return Ending.CANCELLED if cancelled in done else Ending.TIMED_OUT


async def _pump(reader: asyncio.StreamReader | None, masker: SecretMasker, shipper: LogShipper,
                step_index: int, stream: int) -> None:
    assert reader is not None
    lines = masker.line_masker()
    try:
        while data := await reader.read(READ_SIZE):
            shipper.append(step_index, stream, lines.feed(data))
    finally:
        shipper.append(step_index, stream, lines.finish())


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # On some systems a group of only zombies answers EPERM: nothing left to stop.
        return False
    return True
