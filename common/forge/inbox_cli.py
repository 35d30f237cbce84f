"""`solstice-<name>-integration inbox`: the webhook inbox as operators see it.

    solstice-forge-integration inbox [--parked] [--json] [--config FILE] [--database-url DSN]
    solstice-forge-integration inbox --retry ID

Lists the integration's deliveries still to process (`pending`, with their attempts and
last error) and those `parked`, oldest first, after a line of counts per state; `--parked`
lists only the parked ones. `--retry ID` puts a parked delivery back to pending, due now,
its attempts reset (exit 1 when there is no parked delivery ID of this integration).

The command reads the integration's own database (`database_url`), on the integration's
machine. Operators see the same from `ciadm inbox`: the orchestrators, whose database may be
another (docs/config.md), ask the integrations over HTTP (`common.forge.inbox_api`).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from common.cli import one_line
from common.forge.inbox import Inbox, InboxEntry, InboxState

BACKLOG = (InboxState.PENDING, InboxState.PARKED)


def add_command(subcommands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `inbox` to a command's subcommands."""
    parser = subcommands.add_parser("inbox", help="list the webhook inbox's backlog and parked "
                                                  "deliveries, or retry a parked one")
    # Also accepted after `inbox`; SUPPRESS keeps a value given before it.
    parser.add_argument("--config", default=argparse.SUPPRESS,
                        help="TOML file (default: $SOLSTICE_CONFIG)")
    parser.add_argument("--database-url", default=argparse.SUPPRESS)
    parser.add_argument("--parked", action="store_true", help="only the parked deliveries")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--retry", type=int, metavar="ID",
                        help="process parked delivery ID again")


def _line(entry: InboxEntry) -> str:
    error = one_line(entry.last_error)
    return (f"{entry.id:>6}  {entry.forge:<8} {entry.delivery_id:<38} {entry.event:<14}"
            f" {entry.state.value:<8} {entry.attempts:>3}  {entry.received_at:%Y-%m-%d %H:%M:%S}"
            f"  {error}").rstrip()


async def run(args: argparse.Namespace, open_database: Callable[[str], Awaitable[asyncpg.Pool]],
              database_url: str, forges: Sequence[str], out: Callable[[str], None]) -> int:
    """Do what `args` ask on the inbox of `forges`; the exit status."""
    pool = await open_database(database_url)
    try:
        inbox = Inbox(pool)
        if args.retry is not None:
            if await inbox.retry(forges, args.retry) is None:
                out(f"no parked delivery {args.retry} of {', '.join(forges)} in the inbox")
                return 1
            out(f"delivery {args.retry} is pending again; the inbox worker processes it next")
            return 0
        states = (InboxState.PARKED,) if args.parked else BACKLOG
        entries = await inbox.entries(forges, states, limit=1000)
        if args.json:
            for entry in entries:
                out(json.dumps(entry.as_dict()))
            return 0
        counts = await inbox.counts(forges)
        out("  ".join(f"{state.value} {counts.get(state.value, 0)}" for state in InboxState))
        if entries:
            out(f"{'ID':>6}  {'FORGE':<8} {'DELIVERY':<38} {'EVENT':<14} {'STATE':<8} TRY"
                f"  {'RECEIVED':<19}  LAST ERROR")
        for entry in entries:
            out(_line(entry))
        return 0
    finally:
        await pool.close()
