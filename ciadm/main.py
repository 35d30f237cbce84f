"""Entry point of `ciadm`, the operator CLI against an orchestrator's Admin gRPC service.

Any orchestrator host answers for every run (the state is in the shared Postgres). The address
is `--orchestrator`, else `SOLSTICE_ORCHESTRATOR_ADMIN`, else the Admin listener's default
127.0.0.1:50552. The admin token: `--token-file` / `--token`, else `SOLSTICE_ADMIN_TOKEN_FILE` /
`SOLSTICE_ADMIN_TOKEN` (a file keeps it out of `ps` and the shell history).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc

from common.admin_auth import (
    DEFAULT_ADMIN_ADDRESS,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    bearer_metadata,
    read_token_file,
)
from common.cli import quiet_on_closed_stdout
from common.errors import SolsticeError
from protos import admin_pb2, admin_pb2_grpc

MAX_LIMIT = 1000  # the Admin service's own bound (orchestrator/validate.py)
# gRPC has no scheme of its own: `http://` names the same plain-text port. TLS is not spoken.
PLAIN_SCHEMES = ("http://", "grpc://")
# Targets in gRPC's own naming (`unix:/run/solstice.sock`, `dns:///host:port`) go as they are.
GRPC_TARGETS = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")
TOKEN_HINT = (f"give the orchestrator's admin token: --token-file PATH (or {TOKEN_FILE_ENV}), "
              f"or {TOKEN_ENV}; the operator finds it in the orchestrator's admin_token_file")


class Client:
    """One connection to the Admin service; use as `async with`."""

    def __init__(self, address: str, token: str | None) -> None:
        self.address = address
        self.metadata = bearer_metadata(token) if token else ()
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def address(value: str) -> str:
    """`--orchestrator`'s HOST:PORT; `http://HOST:PORT` (and `grpc://`) name the same port."""
    if value.startswith(GRPC_TARGETS):
        return value
    for scheme in PLAIN_SCHEMES:
        if value.startswith(scheme):
            value = value.removeprefix(scheme).rstrip("/")
            break
    if "://" in value:
        raise argparse.ArgumentTypeError(
            f"{value!r}: ciadm speaks plain gRPC; give HOST:PORT (or http://HOST:PORT) of the "
            "orchestrator's Admin listener")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or "/" in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. {DEFAULT_ADMIN_ADDRESS})")
    return value


def limit(value: str) -> int:
    """`runs --limit`: a whole number from 1 to MAX_LIMIT."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number from 1 to {MAX_LIMIT}")
    return number


def _print_run(run: admin_pb2.Run) -> None:
    trust = "" if run.trusted else " (untrusted)"
    print(f"run {run.run_id}  {run.state}{trust}  {run.message}")
    print(f"  {run.repo} {run.event} {run.ref} @ {run.commit_sha[:12]}  workflow "
          f"{run.workflow_name or '-'}  created {_when(run.created_unix_ms)}")
    if run.page_url:
        print(f"  {run.page_url}")
    for job in run.jobs:
        took = f"{job.duration_s:.1f}s" if job.duration_s >= 0 else ""
        print("  " + "  ".join(part for part in (f"job {job.key}", job.state, took, job.message)
                               if part))
        print(f"      id {job.job_id}")
        if job.page_url:
            print(f"      {job.page_url}")
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
        print(f"{run.run_id}  {run.state:<10} {run.repo:<28} {run.ref:<24} "
              f"{done}/{len(run.jobs)} jobs  {_when(run.created_unix_ms)}")
    return 0


async def cmd_show(client: Client, args: argparse.Namespace) -> int:
    _print_run(await client.stub.GetRun(admin_pb2.RunRef(run_id=args.run), metadata=client.metadata))
    return 0


async def cmd_approve(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.ApproveRun(admin_pb2.RunRef(run_id=args.run), metadata=client.metadata)
    print(f"approved: run {run.run_id} may start its jobs")
    _print_run(run)
    return 0


async def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.CancelRun(admin_pb2.RunRef(run_id=args.run), metadata=client.metadata)
    print(f"cancel requested for run {run.run_id}: queued jobs are cancelled, running ones "
          "asked to stop")
    _print_run(run)
    return 0


async def cmd_hosts(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.ListHosts(admin_pb2.ListHostsRequest(), metadata=client.metadata)
    if not reply.hosts:
        print("no orchestrator hosts registered")
    for host in reply.hosts:
        capacity = ",".join(f"{k}={v}" for k, v in sorted(host.capacity.items()))
        health = "alive" if host.alive else "STALE" if host.state != "stopped" else "stopped"
        print(f"{host.name:<24} {host.state:<9} {health:<8} jobs {host.active_jobs:<3} "
              f"capacity {capacity}  heartbeat {_when(host.last_heartbeat_unix_ms)}")
    return 0


async def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    request = admin_pb2.TailLogsRequest(job_id=args.job, follow=args.follow)
    async for chunk in client.stub.TailLogs(request, metadata=client.metadata):
        sys.stdout.buffer.write(chunk.data)
        sys.stdout.buffer.flush()
    return 0


Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ciadm", description="Operate Solstice CI: runs, "
                                     "approvals, cancels, logs and orchestrator hosts.")
    parser.add_argument("--orchestrator", default=os.environ.get("SOLSTICE_ORCHESTRATOR_ADMIN",
                                                                 DEFAULT_ADMIN_ADDRESS), type=address,
                        help="HOST:PORT of any orchestrator's Admin listener (admin_listen; "
                             f"default {DEFAULT_ADMIN_ADDRESS})")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="PATH",
                       help=f"file holding the admin token (or {TOKEN_FILE_ENV})")
    token.add_argument("--token", help=f"the admin token itself (or {TOKEN_ENV}); visible to "
                                       "other users in `ps`, prefer --token-file")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    runs = add("runs", cmd_runs, "list recent runs")
    runs.add_argument("--limit", type=limit, default=20,
                      help=f"at most this many runs, newest first (1 to {MAX_LIMIT}; default 20)")
    runs.add_argument("--state", default="", help="only runs in this state, e.g. failure")
    add("show", cmd_show, "show a run, its jobs and steps").add_argument("run")
    add("approve", cmd_approve, "let an untrusted run that waits for approval start").add_argument("run")
    add("cancel", cmd_cancel, "cancel a run (queued jobs at once, running ones asked to stop)"
        ).add_argument("run")
    add("hosts", cmd_hosts, "list orchestrator hosts, their capacity and health")
    logs = add("logs", cmd_logs, "print a job's log")
    logs.add_argument("job")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    return parser


def admin_token(args: argparse.Namespace) -> str | None:
    """The token from the flags, else the environment (a file before a literal value)."""
    if args.token_file:
        return read_token_file(args.token_file)
    if args.token:
        return args.token
    if os.environ.get(TOKEN_FILE_ENV):
        return read_token_file(os.environ[TOKEN_FILE_ENV])
    return os.environ.get(TOKEN_ENV) or None


async def _run(args: argparse.Namespace) -> int:
    async with Client(args.orchestrator, admin_token(args)) as client:
        return await args.handler(client, args)


def main(argv: list[str] | None = None) -> int:
    return quiet_on_closed_stdout(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except SolsticeError as exc:
        print(f"ciadm: error: {exc}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"ciadm: error: no orchestrator answers at {args.orchestrator}\n"
                  "  hint: start one (solstice-orchestrator) or pass --orchestrator HOST:PORT",
                  file=sys.stderr)
        elif code == grpc.StatusCode.UNAUTHENTICATED:
            what = "refused the admin token given" if admin_token(args) else "needs the admin token"
            print(f"ciadm: error: the orchestrator at {args.orchestrator} {what}\n"
                  f"  hint: {TOKEN_HINT}", file=sys.stderr)
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            print(f"ciadm: error: {args.orchestrator} does not serve the Admin service (the "
                  "Runner port?)\n  hint: pass --orchestrator with the orchestrator's "
                  f"admin_listen address (default {DEFAULT_ADMIN_ADDRESS})", file=sys.stderr)
        else:
            print(f"ciadm: error: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
