"""Debug sessions in a held machine: the runner's side of `ciadm shell` and `ciadm exec`.

After the runner reported a failure and the orchestrator answered that the machine is held, the
runner opens the `DebugSessions` stream over its authenticated, outbound channel and serves
every session sent down it until the orchestrator ends the stream (the hold is over): a shell
is `bash` on a fresh PTY (window size changes, Ctrl-C and job control as in any terminal), an
exec is `bash -c COMMAND` with pipes. Both run in the job's workspace with the job's
environment, its secrets left out.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import termios
from collections.abc import Mapping
from pathlib import Path

import grpc

from protos import runner_pb2
from workflow_runner.client import RunnerClient, classify
from workflow_runner.job import step_env

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024


def debug_env(job: runner_pb2.Job, workspace: Path,
              inherited: Mapping[str, str]) -> dict[str, str]:
    """The steps' environment without the job's secrets (a person reads this terminal)."""
    public = runner_pb2.Job()
    public.CopyFrom(job)
    public.ClearField("secrets")
    env = step_env(public, workspace, inherited)
    env.setdefault("TERM", "xterm-256color")
    return env


def set_window_size(fd: int, size: runner_pb2.WindowSize) -> None:
    """TIOCSWINSZ on the PTY: the kernel tells its foreground process group (SIGWINCH)."""
    if size.rows and size.cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


# The shell's first bash is a session leader (start_new_session) and opens the PTY by name:
# a session leader without a terminal that opens one gets it as its controlling terminal, so
# Ctrl-C and job control reach the foreground process group. (A `preexec_fn` doing TIOCSCTTY
# would do the same, but forking with a callback is unsafe next to gRPC's threads.)
SHELL_ON_TTY = 'exec bash -i <>"$0" >&0 2>&0'


def _status(returncode: int) -> int:
    """A process' exit status as a shell reports it (128 + signal when killed)."""
    return 128 - returncode if returncode < 0 else returncode


class DebugProcess:
    """One session's process; `output()` yields what it writes until it exited."""

    def __init__(self, process: asyncio.subprocess.Process, master: int | None = None,
                 slave: int | None = None) -> None:
        self.process = process
        self.master = master
        # The runner keeps the terminal's other end open while the shell lives: a PTY whose
        # every slave is closed reads as EIO, which the shell's start (it opens the terminal
        # by name) would otherwise race with. The session ends when the shell exits.
        self.slave = slave
        self._reading: asyncio.Future[None] | None = None

    @classmethod
    async def start(cls, opening: runner_pb2.DebugOpen, workspace: Path,
                    env: dict[str, str]) -> DebugProcess:
        if opening.command:
            process = await asyncio.create_subprocess_exec(
                "bash", "-c", opening.command, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                cwd=workspace, env=env, start_new_session=True)
            return cls(process)
        master, slave = os.openpty()
        try:
            set_window_size(slave, opening.size)
            process = await asyncio.create_subprocess_exec(
                "bash", "-c", SHELL_ON_TTY, os.ttyname(slave), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                cwd=workspace, env=env, start_new_session=True)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        os.set_blocking(master, False)
        return cls(process, master, slave)

    def write(self, data: bytes) -> None:
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.write(self.master, data)

    def resize(self, size: runner_pb2.WindowSize) -> None:
        if self.master is not None:
            with contextlib.suppress(OSError):
                set_window_size(self.master, size)

    async def output(self) -> asyncio.Queue[bytes | None]:
        """A queue of the process' output, None once it exited and all of it was read."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        if self.master is None:
            assert self.process.stdout is not None
            stdout = self.process.stdout

            async def pipe() -> None:
                while data := await stdout.read(READ_SIZE):
                    queue.put_nowait(data)
                queue.put_nowait(None)

            self._reading = asyncio.ensure_future(pipe())
            return queue
        loop = asyncio.get_running_loop()
        master = self.master

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, READ_SIZE)
                except OSError:  # BlockingIOError: nothing more for now
                    return
                if not data:
                    return
                queue.put_nowait(data)

        async def until_exit() -> None:
            await self.process.wait()
            loop.remove_reader(master)
            drain()
            queue.put_nowait(None)

        loop.add_reader(master, drain)
        self._reading = asyncio.ensure_future(until_exit())
        return queue

    async def wait(self) -> int:
        return _status(await self.process.wait())

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        if self.master is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = None
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None


class DebugServer:
    """Serves the held machine's sessions until the orchestrator ends the hold."""

    def __init__(self, client: RunnerClient, job: runner_pb2.Job, workspace: Path,
                 inherited: Mapping[str, str]) -> None:
        self.client = client
        self.workspace = workspace
        self.env = debug_env(job, workspace, inherited)
        self._outgoing: asyncio.Queue[runner_pb2.DebugFromRunner] = asyncio.Queue()
        self._sessions: dict[int, DebugProcess] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Serve until the orchestrator closes the stream; every session is killed then."""
        call = self.client.stub.DebugSessions(metadata=self.client.metadata)
        writer = asyncio.ensure_future(self._write(call))
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                self.client.touch()
                await self._dispatch(message)
        except grpc.aio.AioRpcError as exc:
            raise classify(exc, "DebugSessions") from exc
        finally:
            writer.cancel()
            for process in self._sessions.values():
                process.kill()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(writer, *self._tasks, return_exceptions=True)
            for process in self._sessions.values():
                process.close()
            call.cancel()

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            await call.write(await self._outgoing.get())

    async def _dispatch(self, message: runner_pb2.DebugToRunner) -> None:
        kind = message.WhichOneof("kind")
        process = self._sessions.get(message.session)
        if kind == "open":
            try:
                started = await DebugProcess.start(message.open, self.workspace, self.env)
            except OSError as exc:
                self._outgoing.put_nowait(runner_pb2.DebugFromRunner(
                    session=message.session, error=f"cannot start bash: {exc}"))
                return
            self._sessions[message.session] = started
            log.info("debug session started", extra={"session": message.session,
                                                     "shell": not message.open.command})
            task = asyncio.ensure_future(self._serve(message.session, started))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif process is None:
            return  # a session that already ended
        elif kind == "input":
            process.write(message.input)
        elif kind == "resize":
            process.resize(message.resize)
        elif kind == "close":
            process.kill()

    async def _serve(self, session: int, process: DebugProcess) -> None:
        output = await process.output()
        try:
            while (data := await output.get()) is not None:
                self._outgoing.put_nowait(runner_pb2.DebugFromRunner(session=session,
                                                                     output=data))
            code = await process.wait()
        finally:
            process.close()
            self._sessions.pop(session, None)
        self._outgoing.put_nowait(runner_pb2.DebugFromRunner(session=session, exit_code=code))
