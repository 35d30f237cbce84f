"""`ciadm shell` / `ciadm exec` on the orchestrator: relay one Admin `Shell` stream to a held
machine's runner (orchestrator/holds.py) and back, and account for it in the audit log.

Only this host's held machines are reachable: a job held by another host is refused with that
host's Admin address (the orchestrators do not relay to each other).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from orchestrator.holds import DebugChannel, HeldMachine, Notice
from orchestrator.logstore import LogStore
from orchestrator.validate import NO_STEP
from protos import admin_pb2, runner_pb2

# A recorded session keeps at most this much of its output in the job's log.
MAX_RECORDED_BYTES = 1024 * 1024
# Exit status of a session the orchestrator ended (the hold ended, the runner left), as ssh
# reports a lost connection.
ENDED_BY_HOLD = 255


@dataclass
class SessionRecord:
    """What the audit log keeps of a session once it ended."""

    exit_code: int
    seconds: float
    output_bytes: int
    # The output kept for the job's log (`ciadm ... --record`); None when not recorded.
    kept: bytearray | None = field(default=None, repr=False)


async def relay(held: HeldMachine, open_: admin_pb2.ShellOpen,
                inputs: AsyncIterator[admin_pb2.ShellInput],
                record: SessionRecord) -> AsyncIterator[admin_pb2.ShellOutput]:
    """The session's output and notices; `record` is filled in as it goes (the exit status
    last: the caller sends it once it accounted for the session). `LookupError` when the
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
                    return
                continue
            kind = item.WhichOneof("kind")
            if kind == "output":
                record.output_bytes += len(item.output)
                if record.kept is not None and len(record.kept) < MAX_RECORDED_BYTES:
                    record.kept += item.output[:MAX_RECORDED_BYTES - len(record.kept)]
                yield admin_pb2.ShellOutput(data=item.output)
            elif kind == "exit_code":
                record.exit_code = item.exit_code
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


async def write_to_log(logs: LogStore, held: HeldMachine, who: str, what: str,
                       record: SessionRecord) -> None:
    """Append a recorded session to the job's log as a marked section of its own (masked like
    every line of the job)."""
    session = held.session
    assert record.kept is not None
    cut = record.output_bytes > len(record.kept)
    output = bytes(record.kept)
    if output and not output.endswith(b"\n"):
        output += b"\n"
    pieces = [
        (runner_pb2.SYSTEM, f"solstice: ---- debug session ({what}) by {who}, recorded "
                            "at their request ----\n".encode()),
        (runner_pb2.STDOUT, session.masker.mask(output)),
        (runner_pb2.SYSTEM, (f"solstice: ---- end of debug session: exit {record.exit_code}, "
                             f"{record.seconds:.1f} s"
                             + (f", output cut at {MAX_RECORDED_BYTES} bytes" if cut else "")
                             + " ----\n").encode())]
    for stream, data in pieces:
        if not data:
            continue
        seq = session.next_free_seq
        session.ahead.add(seq)
        logs.add((session.job_id, session.attempt, seq, NO_STEP, stream, datetime.now(UTC),
                  data))
    await logs.sync()
