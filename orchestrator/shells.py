"""`ciadm shell` / `ciadm exec` on the orchestrator: relay one Admin `Shell` stream to a held
machine's runner (orchestrator/holds.py) and back, and account for it in the audit log.

Only this host's held machines are reachable: a job held by another host is refused with that
host's Admin address (the orchestrators do not relay to each other).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from orchestrator.holds import DebugChannel, HeldMachine, Notice
from protos import admin_pb2

# Exit status of a session the orchestrator ended (the hold ended, the runner left), as ssh
# reports a lost connection.
ENDED_BY_HOLD = 255


@dataclass
class SessionRecord:
    """What the audit log keeps of a session once it ended."""

    exit_code: int
    seconds: float
    output_bytes: int


async def relay(held: HeldMachine, open_: admin_pb2.ShellOpen,
                inputs: AsyncIterator[admin_pb2.ShellInput],
                record: SessionRecord) -> AsyncIterator[admin_pb2.ShellOutput]:
    """The session's outputs; `record` is filled in as it goes. `LookupError` when the
    runner cannot take the session."""
    started = time.monotonic()
    channel = await held.open(open_.command, open_.rows or 24, open_.cols or 80)
    pump = asyncio.ensure_future(_forward(held, channel, inputs))
    try:
        while True:
            item = await channel.inbox.get()
            if isinstance(item, Notice):
                yield admin_pb2.ShellOutput(notice=item.text)
                if item.final:
                    record.exit_code = ENDED_BY_HOLD
                    yield admin_pb2.ShellOutput(exit_code=ENDED_BY_HOLD)
                    return
                continue
            kind = item.WhichOneof("kind")
            if kind == "output":
                record.output_bytes += len(item.output)
                yield admin_pb2.ShellOutput(data=item.output)
            elif kind == "exit_code":
                record.exit_code = item.exit_code
                yield admin_pb2.ShellOutput(exit_code=item.exit_code)
                return
            elif kind == "error":
                raise LookupError(f"the runner could not start the session: {item.error}")
    finally:
        record.seconds = time.monotonic() - started
        pump.cancel()
        held.close(channel)


async def _forward(held: HeldMachine, channel: DebugChannel,
                   inputs: AsyncIterator[admin_pb2.ShellInput]) -> None:
    async for message in inputs:
        kind = message.WhichOneof("kind")
        if kind == "data":
            held.send_input(channel, message.data)
        elif kind == "resize":
            held.resize(channel, message.resize.rows, message.resize.cols)
