"""`ciadm runs`, `show`, `approve`, `cancel` and `logs`: runs and their jobs."""
from __future__ import annotations

import argparse
import json
import sys

from ciadm.client import MAX_LIMIT, AddCommand, Client, limit, when
from ciadm.output import emit, wants_json
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
        for earlier in job.earlier_attempts:
            print(f"      attempt {earlier.attempt}: {earlier.state}  {earlier.message}".rstrip())
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

    def human() -> None:
        if not reply.runs:
            print("no runs")
        for run in reply.runs:
            done = sum(j.state == "success" for j in run.jobs)
            print(f"{run.run_id}  {run.state:<17} {run.repo:<28} {run.ref:<24} "
                  f"{done}/{len(run.jobs)} jobs  {when(run.created_unix_ms)}")

    emit(args, list(reply.runs), human)
    return 0


async def cmd_show(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.GetRun(admin_pb2.RunRef(run_id=args.run), metadata=client.metadata)
    emit(args, run, lambda: print_run(run))
    return 0


async def cmd_approve(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.ApproveRun(admin_pb2.RunRef(run_id=args.run,
                                                        on_behalf_of=args.on_behalf_of), metadata=client.metadata)

    def human() -> None:
        print(f"approved: run {run.run_id} may start its jobs")
        print_run(run)

    emit(args, run, human)
    return 0


async def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.CancelRun(admin_pb2.RunRef(run_id=args.run,
                                                       on_behalf_of=args.on_behalf_of), metadata=client.metadata)

    def human() -> None:
        print(f"cancel requested for run {run.run_id}: queued jobs are cancelled, running ones "
              "asked to stop")
        print_run(run)

    emit(args, run, human)
    return 0


class LinePrinter:
    """Log chunks of a whole run as whole lines, each prefixed with its job key (`[build] ...`),
    or as JSON Lines (`{"job", "step", "stream", "line"}`); a job's log alone passes as is."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.partial: dict[str, bytes] = {}

    def write(self, chunk: admin_pb2.LogLines) -> None:
        if not chunk.job_key and not self.as_json:
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.buffer.flush()
            return
        text = self.partial.pop(chunk.job_key, b"") + chunk.data
        *lines, rest = text.split(b"\n")
        if rest:
            self.partial[chunk.job_key] = rest
        for line in lines:
            self._line(chunk.job_key, chunk.step_index, chunk.stream, line)
        sys.stdout.flush()
        sys.stdout.buffer.flush()

    def close(self) -> None:
        for key, rest in self.partial.items():
            self._line(key, -1, 0, rest)
        self.partial.clear()

    def _line(self, key: str, step: int, stream: int, line: bytes) -> None:
        if self.as_json:
            print(json.dumps({"job": key, "step": step, "stream": stream,
                              "line": line.decode(errors="replace")}))
        else:
            sys.stdout.buffer.write(b"[" + key.encode() + b"] " + line + b"\n")


async def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    request = admin_pb2.TailLogsRequest(job_id=args.id, follow=args.follow)
    printer = LinePrinter(wants_json(args))
    async for chunk in client.stub.TailLogs(request, metadata=client.metadata):
        printer.write(chunk)
    printer.close()
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
    logs = add("logs", cmd_logs, "print a job's log, or every job's of a run (each line "
               "prefixed with its job; --json: JSON Lines)")
    logs.add_argument("id", metavar="RUN_OR_JOB")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing until the job (or the run) ends")
