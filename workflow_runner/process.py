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
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.masking import SecretMasker
from protos import runner_pb2
from workflow_runner.logs import LogShipper
from workflow_runner.maskfile import MaskFile

# After the main process exited, wait this long for its pipes to close before moving on.
DRAIN_SECONDS = 0.5
STREAMS = {1: runner_pb2.STDOUT, 2: runner_pb2.STDERR}


class Ending(enum.Enum):
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Finished:
    ending: Ending
    exit_code: int  # 128+N when killed by signal N
    duration_ms: int


class _Output(asyncio.SubprocessProtocol):
    """Receives a command's stdout and stderr as they come and ships them, masked.

    The protocol (rather than `asyncio.subprocess.Process`) tells process exit and pipe closure
    apart: `Process.wait` waits for both, so a background child holding the pipes would stall
    a step that is long finished.
    """

    def __init__(self, masker: SecretMasker, shipper: LogShipper, step_index: int,
                 mask_file: MaskFile | None) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._lines = {fd: masker.line_masker(on_mask=shipper.report_mask) for fd in STREAMS}
        self._shipper = shipper
        self._step_index = step_index
        self._mask_file = mask_file

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if self._mask_file is not None:  # values written there before this output was
            self._mask_file.poll()
        self._shipper.append(self._step_index, STREAMS[fd], self._lines[fd].feed(data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        lines = self._lines.pop(fd, None)
        if lines is not None:
            self._shipper.append(self._step_index, STREAMS[fd], lines.finish())
        if not self._lines and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class ProcessGroups:
    """The process groups and output pipes of one job, so none outlives the job."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._groups: list[int] = []
        self._outputs: list[tuple[asyncio.SubprocessTransport, _Output]] = []

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
        """Stop every group the job started and collect the last output of their pipes."""
        await asyncio.gather(*(self.terminate(pgid) for pgid in self._groups))
        self._groups.clear()
        pending = [output.closed for _, output in self._outputs if not output.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=drain_timeout)
        for transport, _ in self._outputs:
            transport.close()  # a process that left its group may still hold a pipe
        self._outputs.clear()

    async def run(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], step_index: int,
        shipper: LogShipper, masker: SecretMasker, deadline: float | None,
        cancel: asyncio.Event, mask_file: MaskFile | None = None,
    ) -> Finished:
        """Run `argv` until it exits, `deadline` (loop time) passes or `cancel` is set;
        `mask_file` is read before each piece of its output is masked."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        transport, output = await loop.subprocess_exec(
            lambda: _Output(masker, shipper, step_index, mask_file), *argv, cwd=cwd, env=dict(env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        pgid = transport.get_pid()
        self._groups.append(pgid)
        self._outputs.append((transport, output))
        try:
            ending = await _supervise(output.exited, deadline, cancel)
            if ending is not Ending.EXITED:
                await self.terminate(pgid)
                await output.exited
            await asyncio.wait([output.closed], timeout=DRAIN_SECONDS)
        except asyncio.CancelledError:
            await asyncio.shield(self.terminate(pgid))
            raise
        # Forget groups with no process left: only a live group pins its id, so a stale
        # id could later name somebody else's group.
        self._groups = [g for g in self._groups if _signal_group(g, 0)]
        code = transport.get_returncode()
        assert code is not None
        return Finished(ending, code if code >= 0 else 128 - code,
                        int((time.monotonic() - started) * 1000))


async def _supervise(exited: asyncio.Future[None], deadline: float | None,
                     cancel: asyncio.Event) -> Ending:
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({exited, cancelled}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
    if exited in done:
        return Ending.EXITED
    return Ending.CANCELLED if cancelled in done else Ending.TIMED_OUT


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
