"""Entry point of `ciadm`, the operator CLI against an orchestrator's Admin gRPC service.

Any orchestrator host answers for every run (the state is in the shared Postgres). The address
is `--orchestrator`, else `SOLSTICE_ORCHESTRATOR_ADMIN`, else the Admin listener's default
127.0.0.1:50552. The admin token: `--token-file` / `--token`, else `SOLSTICE_ADMIN_TOKEN_FILE` /
`SOLSTICE_ADMIN_TOKEN` (a file keeps it out of `ps` and the shell history).

Each topic's commands live in a module of their own with a `register(add)` function, listed in
`COMMAND_MODULES`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc

from ciadm import (
    artifacts,
    audit,
    debug,
    hosts,
    inbox,
    record,
    retention,
    runs,
    secrets,
    steer,
    submit,
    tokens,
)
from ciadm.client import TOKEN_HINT, Client, Command, CommandParser, address, admin_token
from common.admin_auth import DEFAULT_ADMIN_ADDRESS, TOKEN_ENV, TOKEN_FILE_ENV
from common.cli import quiet_on_closed_stdout
from common.errors import SolsticeError

COMMAND_MODULES = (runs, hosts, submit, steer, record, artifacts, retention, secrets, tokens,
                   audit, debug, inbox)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ciadm", description="Operate Solstice CI: runs, "
                                     "submits, re-runs, approvals, cancels, logs, artifacts, the queue, "
                                     "orchestrator hosts and the webhook inboxes.")
    parser.add_argument("--orchestrator", default=os.environ.get("SOLSTICE_ORCHESTRATOR_ADMIN",
                                                                 DEFAULT_ADMIN_ADDRESS), type=address,
                        help="HOST:PORT of any orchestrator's Admin listener (admin_listen; "
                             f"default {DEFAULT_ADMIN_ADDRESS})")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="PATH",
                       help=f"file holding the admin token (or {TOKEN_FILE_ENV})")
    token.add_argument("--token", help=f"the admin token itself (or {TOKEN_ENV}); visible to "
                                       "other users in `ps`, prefer --token-file")
    parser.add_argument("--json", action="store_true",
                        help="answer in JSON for machines instead of a table (also accepted "
                             "after the command)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=CommandParser)

    def add(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        # SUPPRESS: not given after the command, the global --json stands.
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="answer in JSON for machines instead of a table")
        return p

    for module in COMMAND_MODULES:
        module.register(add)
    return parser


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
