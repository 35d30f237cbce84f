"""`ciadm runs`, `show`, `approve`, `cancel` and `logs`: runs and their jobs."""
from __future__ import annotations

import argparse
import sys

from ciadm.client import MAX_LIMIT, AddCommand, Client, limit, when
from protos import admin_pb2


def print_run(run: admin_pb2.Run) -> None:
    """A run with its jobs and steps, as `ciadm show` prints it."""
    trust = "" if run.trusted else " (untrusted)"
    print(f"run {run.run_id}  {run.state}{trust}  {run.message}")
    print(f"  {run.repo} {run.event} {run.ref} @ {run.commit_sha[:12]}  workflow "
          f"{run.workflow_name or '-'}  created {when(run.created_unix_ms)}")
    if run.approved_by:
        print(f"  approved by {run.approved_by} at {when(run.approved_unix_ms)}")
    if run.cancelled_by:
        print(f"  cancelled by {run.cancelled_by} at {when(run.cancelled_unix_ms)}")
    if run.page_url:
        print(f"  {run.page_url}")
    if run.gate:
        print(f"  gate: {run.gate}")
        for reason in run.gate_reasons:
            print(f"    - {reason}")
    for job in run.jobs:
        took = f"{job.duration_s:.1f}s" if job.duration_s >= 0 else ""
        print("  " + "  ".join(part for part in (f"job {job.key}", job.state, took, job.message)
                               if part))
        print(f"      id {job.job_id}")
        if job.page_url:
            print(f"      {job.page_url}")
        if job.held_until_unix_ms:
            print(f"      machine held until {when(job.held_until_unix_ms)} UTC on "
                  f"{job.held_host}: ciadm shell {job.job_id}")
        for step in job.steps:  # numbered from 1, as on the web pages
            code = f"exit {step.exit_code}" if step.exit_code >= 0 else ""
            print(f"      {step.index + 1:>2}. {step.name:<30} {step.state:<10} {code}".rstrip())


async def cmd_runs(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.ListRuns(admin_pb2.ListRunsRequest(limit=args.limit, state=args.state),
                                       metadata=client.metadata)
    if not reply.runs:
        print("no runs")
    for run in reply.runs:
        done = sum(j.state == "success" for j in run.jobs)
        print(f"{run.run_id}  {run.state:<17} {run.repo:<28} {run.ref:<24} "
              f"{done}/{len(run.jobs)} jobs  {when(run.created_unix_ms)}")
    return 0


async def cmd_show(client: Client, args: argparse.Namespace) -> int:
    print_run(await client.stub.GetRun(admin_pb2.RunRef(run_id=args.run), metadata=client.metadata))
    return 0


async def cmd_approve(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.ApproveRun(admin_pb2.RunRef(run_id=args.run,
                                                        on_behalf_of=args.on_behalf_of),
                                       metadata=client.metadata)
    print(f"approved: run {run.run_id} may start its jobs")
    print_run(run)
    return 0


async def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.CancelRun(admin_pb2.RunRef(run_id=args.run,
                                                       on_behalf_of=args.on_behalf_of),
                                      metadata=client.metadata)
    print(f"cancel requested for run {run.run_id}: queued jobs are cancelled, running ones "
          "asked to stop")
    print_run(run)
    return 0


async def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    request = admin_pb2.TailLogsRequest(job_id=args.job, follow=args.follow)
    async for chunk in client.stub.TailLogs(request, metadata=client.metadata):
        sys.stdout.buffer.write(chunk.data)
        sys.stdout.buffer.flush()
    return 0


def register(add: AddCommand) -> None:
    runs = add("runs", cmd_runs, "list recent runs")
    runs.add_argument("--limit", type=limit, default=20,
                      help=f"at most this many runs, newest first (1 to {MAX_LIMIT}; default 20)")
    runs.add_argument("--state", default="", help="only runs in this state, e.g. failure or "
                      "awaiting_approval")
    add("show", cmd_show, "show a run, its jobs and steps").add_argument("run")
    for name, handler, text in [
            ("approve", cmd_approve, "let an untrusted run that waits for approval start"),
            ("cancel", cmd_cancel, "cancel a run (queued jobs at once, running ones asked to "
                                   "stop)")]:
        command = add(name, handler, text)
        command.add_argument("run")
        command.add_argument("--on-behalf-of", metavar="FORGE:LOGIN", default="",
                             help="record it as this forge user's (whose permission you "
                                  "checked), e.g. github:octocat")
    logs = add("logs", cmd_logs, "print a job's log")
    logs.add_argument("job")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
