"""Held machines: a failed job's machine kept up for debugging, and the sessions opened into it.

A job that asked for it (`hold_on_failure`, or `ciadm hold` while it ran) and failed keeps its
machine after its result was recorded: the executor registers a `HeldMachine` here and waits
for the first of its TTL, `ciadm release`, the host stopping, or the runner going silent. The
runner, told so in its ReportResult ack, keeps its authenticated channel and opens the
`DebugSessions` stream (`attach_runner`); `ciadm shell`/`exec` sessions (`open`) travel over it,
each with an id of its own. Nothing reaches into the machine: the runner dialled out.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import grpc

from common.supervise import wait_event
from orchestrator.logstore import LogStore
from orchestrator.sessions import JobSession
from protos import runner_pb2

log = logging.getLogger(__name__)

# The person at a held machine's terminal is warned this long before the hold ends.
WARNING_BEFORE = 60.0
# How long a session waits for the runner's DebugSessions stream before giving up.
RUNNER_ATTACH_TIMEOUT = 15.0


@dataclass(frozen=True)
class Notice:
    """A line from the orchestrator for the session's terminal; `final` ends the session."""

    text: str
    final: bool = False


Inbound = runner_pb2.DebugFromRunner | Notice


@dataclass
class DebugChannel:
    """One shell or exec session: what the runner (and the orchestrator) say to it."""

    id: int
    inbox: asyncio.Queue[Inbound] = field(default_factory=asyncio.Queue)


@dataclass
class HeldMachine:
    """A held job's machine; `released` ends the hold with `reason`."""

    session: JobSession
    until: datetime
    deadline: float  # time.monotonic() at which the hold ends
    released: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    runner_attached: asyncio.Event = field(default_factory=asyncio.Event)
    _to_runner: asyncio.Queue[runner_pb2.DebugToRunner | None] = field(
        default_factory=asyncio.Queue)
    _channels: dict[int, DebugChannel] = field(default_factory=dict)
    _next_id: int = 1

    @property
    def job_id(self) -> uuid.UUID:
        return self.session.job_id

    def release(self, reason: str) -> None:
        if not self.released.is_set():
            self.reason = reason
            self.released.set()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def warning(self) -> str:
        return (f"solstice: this machine is destroyed in {max(self.remaining(), 0):.0f} s "
                f"(at {self.until:%H:%M:%S} UTC)")

    async def open(self, command: str, rows: int, cols: int) -> DebugChannel:
        """A new session: a shell on a PTY (`command` empty) or one command with pipes.
        `LookupError` when the runner never attached its DebugSessions stream."""
        if not await wait_event(self.runner_attached, RUNNER_ATTACH_TIMEOUT):
            raise LookupError("the held machine's runner is not connected (it may have "
                              "crashed); release the job")
        channel = DebugChannel(self._next_id)
        self._next_id += 1
        self._channels[channel.id] = channel
        if self.remaining() <= WARNING_BEFORE:  # opened after the warning: it is due now
            channel.inbox.put_nowait(Notice(self.warning()))
        self._send(runner_pb2.DebugToRunner(session=channel.id, open=runner_pb2.DebugOpen(
            command=command, size=runner_pb2.WindowSize(rows=rows, cols=cols))))
        return channel

    def send_input(self, channel: DebugChannel, data: bytes) -> None:
        self._send(runner_pb2.DebugToRunner(session=channel.id, input=data))

    def resize(self, channel: DebugChannel, rows: int, cols: int) -> None:
        self._send(runner_pb2.DebugToRunner(session=channel.id,
                                            resize=runner_pb2.WindowSize(rows=rows, cols=cols)))

    def close(self, channel: DebugChannel) -> None:
        """End the session on the runner (its processes are killed) and forget it."""
        if self._channels.pop(channel.id, None) is not None and not self.released.is_set():
            self._send(runner_pb2.DebugToRunner(session=channel.id, close=True))

    def notify(self, text: str, *, final: bool = False) -> None:
        """Tell every open session (the TTL is near, or the hold ended)."""
        for channel in self._channels.values():
            channel.inbox.put_nowait(Notice(text, final))

    def end(self, reason: str) -> None:
        """The hold is over: end every session and the runner's stream."""
        self.notify(f"solstice: the hold ended ({reason}); the machine is destroyed", final=True)
        self._channels.clear()
        self._to_runner.put_nowait(None)

    def _send(self, message: runner_pb2.DebugToRunner) -> None:
        self._to_runner.put_nowait(message)

    async def attach_runner(self, context: grpc.aio.ServicerContext) -> None:
        """Serve the runner's DebugSessions stream until the hold ends or the runner leaves."""
        self.runner_attached.set()
        reader = asyncio.ensure_future(self._read_runner(context))
        try:
            while True:
                outgoing = asyncio.ensure_future(self._to_runner.get())
                await asyncio.wait({outgoing, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not outgoing.done():
                    outgoing.cancel()
                    return
                message = outgoing.result()
                if message is None:
                    return
                await context.write(message)
        finally:
            reader.cancel()
            self.runner_attached.clear()
            self.notify("solstice: the runner left the held machine", final=True)

    async def _read_runner(self, context: grpc.aio.ServicerContext) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            self.session.touch()
            channel = self._channels.get(message.session)
            if channel is not None:
                channel.inbox.put_nowait(message)


class Holds:
    """The machines this host holds, by job id; `logs` takes recorded sessions."""

    def __init__(self, logs: LogStore | None = None) -> None:
        self._held: dict[uuid.UUID, HeldMachine] = {}
        self.logs = logs

    def add(self, held: HeldMachine) -> None:
        self._held[held.job_id] = held

    def remove(self, held: HeldMachine) -> None:
        if self._held.get(held.job_id) is held:
            del self._held[held.job_id]

    def get(self, job_id: uuid.UUID) -> HeldMachine | None:
        return self._held.get(job_id)

    def release_all(self, reason: str) -> None:
        for held in list(self._held.values()):
            held.release(reason)

    def __len__(self) -> int:
        return len(self._held)
