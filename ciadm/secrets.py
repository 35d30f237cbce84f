"""`ciadm secret set|list|delete|rotate-key`: the secrets production jobs get.

SCOPE is `global`, `owner:ORG` or `repo:OWNER/NAME`, optionally with the forge
(`owner:github:ORG`, `repo:forgejo:OWNER/NAME`) when one Solstice serves several forges.
A value is read from standard input when that is not a terminal (`ciadm secret set repo:a/b
KEY < key.pem`), else typed twice at a prompt without echo; never from the command line,
where `ps` and the shell history would keep it.
"""
from __future__ import annotations

import argparse
import getpass
import sys

from ciadm.client import AddCommand, Client, when
from common.errors import SolsticeError
from protos import admin_pb2

SCOPE_HELP = "global, owner:ORG or repo:OWNER/NAME (optionally owner:FORGE:ORG, repo:FORGE:OWNER/NAME)"
EVENTS = ("push", "pull_request", "tag", "manual")


class UsageError(SolsticeError):
    """A value that could not be read."""


def read_value(name: str) -> str:
    """The secret's value from stdin (one trailing line break dropped) or a no-echo prompt."""
    if not sys.stdin.isatty():
        try:
            value = sys.stdin.buffer.read().decode()
        except UnicodeDecodeError as exc:
            raise UsageError(f"the value of {name} on standard input is not UTF-8 text",
                             hint="secrets reach jobs as environment variables; store binary "
                                  "data base64-encoded") from exc
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
        if not value:
            raise UsageError(f"no value for {name} on standard input",
                             hint=f"pipe it in: ciadm secret set SCOPE {name} < FILE")
        return value
    value = getpass.getpass(f"value of {name} (not shown): ")
    if getpass.getpass("again: ") != value:
        raise UsageError("the two values differ; nothing was stored", hint="type it again")
    return value


def _filters(info: admin_pb2.SecretInfo) -> str:
    parts = []
    if info.branches:
        parts.append("branches " + ",".join(info.branches))
    if info.events:
        parts.append("events " + ",".join(info.events))
    return " ".join(parts) or "-"


async def cmd_set(client: Client, args: argparse.Namespace) -> int:
    request = admin_pb2.SetSecretRequest(scope=args.scope, name=args.name,
                                         value=read_value(args.name), branches=args.branch,
                                         events=args.event)
    info = await client.stub.SetSecret(request, metadata=client.metadata)
    print(f"set {info.name} at {info.scope} ({_filters(info)}; key {info.key_id})")
    return 0


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.ListSecrets(admin_pb2.ListSecretsRequest(scope=args.scope or ""),
                                          metadata=client.metadata)
    if not reply.secrets:
        print("no secrets")
    for info in reply.secrets:
        print(f"{info.scope:<32} {info.name:<24} {_filters(info):<32} key {info.key_id:<12} "
              f"set by {info.set_by} {when(info.set_unix_ms)}")
    return 0


async def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    info = await client.stub.DeleteSecret(admin_pb2.SecretRef(scope=args.scope, name=args.name),
                                          metadata=client.metadata)
    print(f"deleted {info.name} at {info.scope}")
    return 0


async def cmd_rotate(client: Client, args: argparse.Namespace) -> int:
    reply = await client.stub.RotateSecretKey(admin_pb2.RotateSecretKeyRequest(),
                                              metadata=client.metadata)
    print(f"re-encrypted {reply.reencrypted} secret(s) under key {reply.key_id} "
          f"({reply.unchanged} already were)")
    return 0


def register(add: AddCommand) -> None:
    secret = add("secret", cmd_list, "manage the secrets jobs get: set, list, delete, rotate-key")
    sub = secret.add_subparsers(title="secret commands", metavar="COMMAND")

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser

    set_ = command("set", cmd_set, "store a secret (value from stdin, or typed at a prompt)")
    set_.add_argument("scope", help=SCOPE_HELP)
    set_.add_argument("name", help="the environment variable jobs listing it get")
    set_.add_argument("--branch", action="append", default=[], metavar="PATTERN",
                      help="only runs of matching branches (`main`, `release/*`); repeatable")
    set_.add_argument("--event", action="append", default=[], choices=EVENTS,
                      help="only runs of this event kind; repeatable")
    list_ = command("list", cmd_list, "list secrets: names, scopes, filters, who set them "
                    "and when (never values)")
    list_.add_argument("scope", nargs="?", help=f"only this scope: {SCOPE_HELP}")
    delete = command("delete", cmd_delete, "delete a secret")
    delete.add_argument("scope", help=SCOPE_HELP)
    delete.add_argument("name")
    command("rotate-key", cmd_rotate, "re-encrypt every secret under the newest secret key")
    secret.set_defaults(scope=None)
