"""The entry point both integrations share: flags, config, observability, the database
(migrated), the broker, the supervisor, and serving until a signal or a failed task.

    solstice-<name>-integration [--config FILE] [--listen-host H] [--listen-port P]
                                [--database-url DSN] [--amqp-url URL] [flags of its own]
    solstice-<name>-integration inbox [--parked] [--json] [--retry ID]   (`inbox_cli`)

Settings come from `[<section>]` of the config file, `SOLSTICE_<SECTION>__*` variables and
these flags. Exit status: 0 after SIGTERM/SIGINT, 1 when a supervised task failed, 2 for a
configuration or start-up error (the message says what to fix), 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from common.broker import Broker, open_broker
from common.cli import quiet_on_closed_stdout
from common.config import load_config
from common.errors import SolsticeError
from common.forge import inbox_cli
from common.forge.config import IntegrationConfig
from common.forge.migrate import open_pool
from common.forge.service import IntegrationService
from common.http import serve
from common.observability import setup_observability
from common.supervise import Supervisor, TaskFailed

C = TypeVar("C", bound=IntegrationConfig)


def _no_flags(parser: argparse.ArgumentParser) -> None:
    return None


@dataclass(frozen=True)
class EntryPoint(Generic[C]):
    """What makes one integration's command: its names, its config model, and how to build
    its service on an open pool and a connected broker (a context that closes its clients)."""

    prog: str
    description: str
    config: type[C]
    section: str
    open_service: Callable[[C, asyncpg.Pool, Broker, Supervisor],
                           AbstractAsyncContextManager[IntegrationService]]
    # The forges whose deliveries its inbox worker processes (and `inbox` lists).
    forges: tuple[str, ...]
    open_database: Callable[[str], Awaitable[asyncpg.Pool]] = open_pool
    # Flags of its own; each one's destination is a config key.
    flags: Callable[[argparse.ArgumentParser], None] = _no_flags

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(self.config.__module__.split(".")[0])


def parse_args(entry: EntryPoint[C], argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=entry.prog, description=entry.description)
    parser.add_argument("--config", help="TOML file (default: $SOLSTICE_CONFIG)")
    parser.add_argument("--listen-host")
    parser.add_argument("--listen-port", type=int)
    parser.add_argument("--database-url")
    parser.add_argument("--amqp-url")
    entry.flags(parser)
    inbox_cli.add_command(parser.add_subparsers(dest="command", metavar="{inbox}"))
    return parser.parse_args(argv)


async def run(entry: EntryPoint[C], config: C) -> None:
    """Serve until SIGTERM/SIGINT, then finish the requests in flight and close everything;
    raise `TaskFailed` (after the same shutdown) when a supervised task failed."""
    pool = await entry.open_database(config.database_url)
    broker = open_broker(config.amqp_url, config.broker_prefix)
    try:
        await broker.connect()
        supervisor = Supervisor()
        async with entry.open_service(config, pool, broker, supervisor) as service:
            await serve(service.app(), config.listen_host, config.listen_port,
                        ready=lambda url: entry.log.info(
                            "ready", extra={"url": url, **config.ready_fields()}),
                        supervisor=supervisor)
    finally:
        await broker.close()
        await pool.close()
    entry.log.info("stopped")


def _inbox(entry: EntryPoint[C], args: argparse.Namespace) -> int:
    """`inbox` (`common.forge.inbox_cli`): needs only the database of the config."""
    try:
        config = load_config(entry.config, path=args.config, section=entry.section,
                             cli={"database_url": args.database_url})
        return asyncio.run(inbox_cli.run(args, entry.open_database, config.database_url,
                                         entry.forges, print))
    except SolsticeError as exc:
        print(f"{entry.prog} inbox: {exc}", file=sys.stderr)
        return 2


def main(entry: EntryPoint[C], argv: list[str] | None = None) -> int:
    """The command: parse, load and check the config, serve; the exit status (module doc)."""
    args = parse_args(entry, argv)
    if args.command == "inbox":
        return quiet_on_closed_stdout(lambda: _inbox(entry, args))
    cli = {key: value for key, value in vars(args).items() if key not in ("config", "command")}
    try:
        config = load_config(entry.config, path=args.config, section=entry.section, cli=cli)
        config.check()
        # Spans go to OTLP when configured; printing one per webhook would flood stderr.
        setup_observability(entry.prog, level=config.log_level, console_spans=False)
        asyncio.run(run(entry, config))
    except TaskFailed as exc:
        print(f"{entry.prog}: {exc}", file=sys.stderr)
        return 1
    except SolsticeError as exc:
        print(f"{entry.prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
