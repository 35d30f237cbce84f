"""`ciadm rerun`, `drain`, `undrain` and `queue`: steering runs and hosts."""
from __future__ import annotations

import argparse
import sys

from ciadm.client import AddCommand, Client
from ciadm.debug import ttl
from ciadm.hosts import print_host
from ciadm.output import emit, table, wants_json
from ciadm.runs import print_run
from ciadm.submit import follow
from common.workflow.units import format_duration
from protos import admin_pb2


async def cmd_rerun(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.Rerun(admin_pb2.RerunRequest(
        id=args.id, failed_only=args.failed, hold_seconds=args.hold or 0),
        metadata=client.metadata)

    def human() -> None:
        again = ", ".join(j.key for j in run.jobs if j.state == "queued")
        print(f"re-run: run {run.run_id}: {again} queued again (earlier attempts kept)")
        if args.hold:
            print(f"if they fail, their machines are held for {format_duration(args.hold)}: "
                  "`ciadm shell JOB` opens a terminal")
        print_run(run)

    if not args.wait:
        emit(args, run, human)
        return 0
    if not wants_json(args):
        human()
    run = await follow(client, run, redraw=sys.stdout.isatty(), show=not wants_json(args))
    emit(args, run, lambda: print(f"run {run.run_id} ended {run.state}: {run.message}"))
    return 0 if run.state == "success" else 1


async def _set_drained(client: Client, args: argparse.Namespace, drained: bool) -> int:
    host = await client.stub.SetHostDrained(
        admin_pb2.SetHostDrainedRequest(host=args.host, drained=drained), metadata=client.metadata)

    def human() -> None:
        if drained:
            print(f"drained: {host.name} takes no new jobs from its next heartbeat on; its "
                  f"{host.active_jobs} running job(s) finish")
        else:
            print(f"undrained: {host.name} takes jobs again from its next heartbeat on")
        print_host(host)

    emit(args, host, human)
    return 0


async def cmd_drain(client: Client, args: argparse.Namespace) -> int:
    return await _set_drained(client, args, True)


async def cmd_undrain(client: Client, args: argparse.Namespace) -> int:
    return await _set_drained(client, args, False)


async def cmd_queue(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.GetQueue(admin_pb2.GetQueueRequest(), metadata=client.metadata)

    def human() -> None:
        if not reply.labels:
            print("no jobs waiting and no host serving any label")
            return
        table([(q.label, str(q.depth), f"{q.oldest_wait_s:.0f}s" if q.depth else "-",
                str(q.capacity), ", ".join(q.hosts) if q.hosts else
                "NO HOST SERVES THIS LABEL: its jobs wait until one does")
               for q in reply.labels], ("LABEL", "WAITING", "OLDEST", "SLOTS", "HOSTS"))

    emit(args, list(reply.labels), human)
    return 0


def register(add: AddCommand) -> None:
    rerun = add("rerun", cmd_rerun, "a new attempt of a run's jobs (or of one job) and of every "
                "job that needs them; earlier attempts are kept")
    rerun.add_argument("id", metavar="RUN_OR_JOB")
    rerun.add_argument("--failed", action="store_true",
                       help="only the run's jobs that did not succeed (and their dependents)")
    rerun.add_argument("--hold", type=ttl, metavar="TTL",
                       help="hold the machine of each re-run job that fails for TTL (30m, 1h)")
    rerun.add_argument("--wait", action="store_true",
                       help="follow the run to its end (exit status 0 if it succeeded)")
    add("drain", cmd_drain, "stop a host taking new jobs; its running jobs finish (no signal "
        "needed; kept across restarts until undrain)").add_argument("host")
    add("undrain", cmd_undrain, "let a drained host take jobs again").add_argument("host")
    add("queue", cmd_queue, "jobs waiting per runs_on label, the oldest wait, and the hosts "
        "serving each label (a label no host serves is flagged)")
