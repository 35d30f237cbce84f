"""`ciadm audit`: the newest entries of the audit log (who did what, on what, how it ended)."""
from __future__ import annotations

import argparse

from ciadm.client import MAX_LIMIT, AddCommand, Client, limit, when
from protos import admin_pb2


async def cmd_audit(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.ListAudit(admin_pb2.ListAuditRequest(limit=args.limit),
                                        metadata=client.metadata)
    if not reply.entries:
        print("no audit entries")
        return 0
    print(f"{'WHEN':<19}  {'WHO':<28} {'ACTION':<14} {'TARGET':<38} OUTCOME")
    for entry in reply.entries:
        detail = f"  ({entry.detail})" if entry.detail else ""
        print(f"{when(entry.at_unix_ms):<19}  {entry.actor:<28} {entry.action:<14} "
              f"{entry.target:<38} {entry.outcome}{detail}")
    return 0


def register(add: AddCommand) -> None:
    audit = add("audit", cmd_audit, "who approved, cancelled, created or revoked what, newest "
                "first")
    audit.add_argument("--limit", type=limit, default=50,
                       help=f"at most this many entries (1 to {MAX_LIMIT}; default 50)")
