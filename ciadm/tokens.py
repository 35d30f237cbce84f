"""`ciadm token create | list | revoke`: the named admin tokens."""
from __future__ import annotations

import argparse
import sys

from ciadm.client import AddCommand, Client, when
from protos import admin_pb2


async def cmd_create(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.CreateAdminToken(admin_pb2.AdminTokenName(name=args.name),
                                               metadata=client.metadata)
    print(reply.token)
    print(f"admin token {reply.info.name!r} created; it is shown this once (only its hash is "
          "kept): store it now, e.g. in a file for --token-file", file=sys.stderr)
    return 0


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.ListAdminTokens(admin_pb2.ListAdminTokensRequest(),
                                              metadata=client.metadata)
    if not reply.tokens:
        print("no named admin tokens (the configured admin_token is \"bootstrap\")")
        return 0
    print(f"{'NAME':<24} {'CREATED':<19}  {'CREATED BY':<24} {'LAST USED':<19}  REVOKED")
    for token in reply.tokens:
        revoked = (f"{when(token.revoked_unix_ms)} by {token.revoked_by}"
                   if token.revoked_unix_ms else "-")
        print(f"{token.name:<24} {when(token.created_unix_ms):<19}  {token.created_by:<24} "
              f"{when(token.last_used_unix_ms):<19}  {revoked}")
    return 0


async def cmd_revoke(client: Client, args: argparse.Namespace) -> int:
    token = await client.stub.RevokeAdminToken(admin_pb2.AdminTokenName(name=args.name),
                                               metadata=client.metadata)
    print(f"admin token {token.name!r} revoked: its next call is refused")
    return 0


def register(add: AddCommand) -> None:
    token = add("token", cmd_list, "named admin tokens: create, list, revoke")
    commands = token.add_subparsers(title="token commands", metavar="COMMAND")
    create = commands.add_parser("create", help="create a token (printed once on stdout)")
    create.add_argument("name", help="lower-case letters, digits, '.', '_', '-'")
    create.set_defaults(handler=cmd_create)
    commands.add_parser("list", help="every token: created, by whom, last used, revoked"
                        ).set_defaults(handler=cmd_list)
    revoke = commands.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("name")
    revoke.set_defaults(handler=cmd_revoke)
