"""`ciadm hold`, `release`, `shell` and `exec`: stand inside a failed job's machine.

A held machine (a failed job with `hold_on_failure`, or one held with `ciadm hold` while it
ran) is reached through the orchestrator host that holds it, over its runner's own channel:
no port is opened on the machine. `shell` puts the local terminal in raw mode and relays
keystrokes (Ctrl-C included: the remote terminal turns it into SIGINT) and window size
changes; it exits with the remote shell's status. `exec` runs one command and exits with its
status. A session the orchestrator ended (the hold ran out, the runner left) exits 255.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
import termios
import tty
from collections.abc import Iterator

from ciadm.client import AddCommand, Client
from common.workflow.units import format_duration, parse_duration
from protos import admin_pb2

LOST = 255


def ttl(value: str) -> int:
    """`--ttl`: a duration like 30m, 1h or 90s."""
    seconds = parse_duration(value)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30m, 1h or 90s")
    return seconds




async def cmd_hold(client: Client, args: argparse.Namespace) -> int:
    job = await client.stub.HoldJob(admin_pb2.HoldRequest(job_id=args.job, ttl_seconds=args.ttl),
                                    metadata=client.metadata)
    print(f"job {job.key} ({job.job_id}) {job.state}: if it fails, its machine is held for "
          f"{format_duration(args.ttl)}")
    return 0


async def cmd_release(client: Client, args: argparse.Namespace) -> int:
    job = await client.stub.ReleaseJob(admin_pb2.JobRef(job_id=args.job),
                                       metadata=client.metadata)
    print(f"job {job.key} ({job.job_id}): released; its machine is destroyed")
    return 0


def _window_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
    except OSError:
        return 24, 80
    return size.lines, size.columns


@contextlib.contextmanager
def _raw_terminal() -> Iterator[None]:
    """The local terminal in raw mode (every key goes to the remote side), restored after."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _session(client: Client, opening: admin_pb2.ShellOpen, interactive: bool) -> int:
    call = client.stub.Shell(metadata=client.metadata)
    await call.write(admin_pb2.ShellInput(open=opening))
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    if interactive:
        def typed() -> None:
            try:
                data = os.read(stdin, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(stdin)
                return
            loop.create_task(call.write(admin_pb2.ShellInput(data=data)))

        def resized() -> None:
            rows, cols = _window_size()
            loop.create_task(call.write(admin_pb2.ShellInput(
                resize=admin_pb2.ShellResize(rows=rows, cols=cols))))

        loop.add_reader(stdin, typed)
        loop.add_signal_handler(signal.SIGWINCH, resized)
    out = sys.stdout.buffer
    try:
        async for message in call:
            kind = message.WhichOneof("kind")
            if kind == "data":
                out.write(message.data)
                out.flush()
            elif kind == "notice":
                sys.stderr.write(f"\r\n{message.notice}\r\n" if interactive
                                 else f"{message.notice}\n")
                sys.stderr.flush()
            elif kind == "exit_code":
                return message.exit_code
        return LOST
    finally:
        if interactive:
            loop.remove_reader(stdin)
            loop.remove_signal_handler(signal.SIGWINCH)
        call.cancel()


async def cmd_shell(client: Client, args: argparse.Namespace) -> int:
    rows, cols = _window_size()
    opening = admin_pb2.ShellOpen(job_id=args.job, rows=rows, cols=cols, record=args.record)
    with _raw_terminal():
        return await _session(client, opening, interactive=True)


async def cmd_exec(client: Client, args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("ciadm exec: give the command after --, e.g. ciadm exec JOB -- uname -a",
              file=sys.stderr)
        return 2
    opening = admin_pb2.ShellOpen(job_id=args.job, command=shlex.join(command),
                                  record=args.record)
    return await _session(client, opening, interactive=False)


def register(add: AddCommand) -> None:
    hold = add("hold", cmd_hold, "keep a running job's machine up for debugging if it fails")
    hold.add_argument("job")
    hold.add_argument("--ttl", type=ttl, default=ttl("30m"),
                      help="how long the machine is held after the failure (default 30m)")
    add("release", cmd_release, "end a job's hold now: its machine is destroyed"
        ).add_argument("job")
    for name, handler, text in [
            ("shell", cmd_shell, "open a terminal in a held job's machine"),
            ("exec", cmd_exec, "run one command in a held job's machine; exits with its status")]:
        command = add(name, handler, text)
        command.add_argument("job")
        command.add_argument("--record", action="store_true",
                             help="also write the session's output into the job's log")
        if name == "exec":
            # Everything after JOB is the command (options go before JOB, as with docker exec).
            command.add_argument("command", nargs=argparse.REMAINDER,
                                 metavar="-- COMMAND [ARG...]", help="the command, after --")
