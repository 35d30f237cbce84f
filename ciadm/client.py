"""The connection `ciadm` holds to an orchestrator's Admin gRPC service, and the argument types
every command shares."""
from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from common.admin_auth import (
    DEFAULT_ADMIN_ADDRESS,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    bearer_metadata,
    read_token_file,
)
from protos import admin_pb2_grpc

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


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: options and positionals in any order (`download RUN --job KEY
    PATH`), which plain argparse refuses once a `*` positional has matched nothing."""

    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # The intermixed parse's own passes, and what argparse cannot intermix (a command with
        # subcommands of its own, `secret set`; one taking the rest, `exec JOB -- CMD`): parsed
        # as usual.
        if self._intermixing or any(a.nargs in (argparse.PARSER, argparse.REMAINDER)
                                    for a in self._actions):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


Command = Callable[[Client, argparse.Namespace], Awaitable[int]]
# `add(name, handler, help)` registers one subcommand and returns its parser for arguments.
AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]


def when(ms: int) -> str:
    """A Unix time in milliseconds as UTC for a table; `-` for none."""
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


def admin_token(args: argparse.Namespace) -> str | None:
    """The token from the flags, else the environment (a file before a literal value)."""
    if args.token_file:
        return read_token_file(args.token_file)
    if args.token:
        return args.token
    if os.environ.get(TOKEN_FILE_ENV):
        return read_token_file(os.environ[TOKEN_FILE_ENV])
    return os.environ.get(TOKEN_ENV) or None
