"""`ciadm prune`: the retention sweep now, or with `--dry-run` what it would delete."""
from __future__ import annotations

import argparse
import json

from ciadm.client import AddCommand, Client, when
from common.text import byte_size
from protos import admin_pb2


async def cmd_prune(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.Prune(admin_pb2.PruneRequest(dry_run=args.dry_run),
                                    metadata=client.metadata)
    if args.json:
        print(json.dumps({"dry_run": reply.dry_run, "bytes": reply.bytes, "runs": [{
            "run_id": r.run_id, "repository": r.repository, "ref": r.ref,
            "finished_unix_ms": r.finished_unix_ms, "keep_days": r.keep_days,
            "bytes": r.bytes} for r in reply.runs]}, indent=2))
        return 0
    for run in reply.runs:
        print(f"{run.run_id}  {run.repository:<28} {run.ref:<24} finished "
              f"{when(run.finished_unix_ms)}  kept {run.keep_days}d  {byte_size(run.bytes):>10}")
    verb = "would delete" if reply.dry_run else "deleted"
    print(f"{verb} {len(reply.runs)} runs, {byte_size(reply.bytes)}")
    return 0


def register(add: AddCommand) -> None:
    prune = add("prune", cmd_prune, "delete the finished runs past their retention (records, "
                "logs, artifacts); --dry-run lists them")
    prune.add_argument("--dry-run", action="store_true",
                       help="list what would go and its size; delete nothing")
