"""Bring an orchestrator up from its config: standalone (embedded PostgreSQL via `pgserver`
and the in-process broker) unless `database_url` / `amqp_url` name real servers.

    async with running(config, backend=LocalBackend(root)) as orchestrator:
        run_id = await orchestrator.api.submit(request)
        summary = await orchestrator.api.wait(run_id)
"""
from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg

from common.broker import open_broker
from common.supervise import Supervisor
from orchestrator.backends.base import VMBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.db import Database, migrate
from orchestrator.db.embedded import EmbeddedPostgres
from orchestrator.service import Orchestrator
from orchestrator.tokens import random_token

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "solstice"


_SCHEMA = re.compile(r"^[a-z]+_[a-z0-9_]{1,60}$")


def _lock_key(schema: str) -> str:
    return f"solstice.schema.{schema}"


async def _sweep(conn: asyncpg.Connection, prefix: str) -> None:
    """Drop throw-away schemas of `prefix` whose owner died without dropping them (a
    `cidev run` killed with -9): no process holds their advisory lock any more."""
    names = await conn.fetch("SELECT schema_name FROM information_schema.schemata"
                             " WHERE starts_with(schema_name, $1)", prefix)
    for row in names:
        name = row["schema_name"]
        if not _SCHEMA.match(name) or not await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtext($1))", _lock_key(name)):
            continue
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            log.info("dropped an abandoned schema", extra={"schema": name})
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _lock_key(name))


@asynccontextmanager
async def _private_schema(dsn: str, schema: str) -> AsyncIterator[None]:
    """Create `schema` (named `<kind>_<unique>`), hold it while in use, drop it at the end.

    A session advisory lock marks it as in use, so the next caller of the same kind can
    drop the ones left behind by a process that died.
    """
    if not _SCHEMA.match(schema):
        raise ValueError(f"invalid schema name {schema!r} (want kind_unique, lower case)")
    holder = await asyncpg.connect(dsn)
    try:
        await _sweep(holder, schema.split("_", 1)[0] + "_")
        await holder.execute("SELECT pg_advisory_lock(hashtext($1))", _lock_key(schema))
        await holder.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        try:
            yield
        finally:
            await holder.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await holder.close()


@asynccontextmanager
async def database(config: OrchestratorConfig, *, embedded_name: str = EMBEDDED_DATABASE,
                   schema: str | None = None) -> AsyncIterator[Database]:
    """A migrated database: `config.database_url`, else `embedded_name` in the embedded server
    under `config.state_dir`. With `schema`, the tables live in that schema of their own,
    created now and dropped on exit (a throw-away run such as `cidev run`)."""
    async with AsyncExitStack() as stack:
        if config.database_url:
            dsn = config.database_url
        else:
            server = EmbeddedPostgres(config.state_dir / "pgdata")
            await server.start()
            stack.push_async_callback(server.stop)
            dsn = await server.create_database(embedded_name)
        if schema is not None:
            await stack.enter_async_context(_private_schema(dsn, schema))
        db = await Database.connect(dsn, schema=schema)
        stack.push_async_callback(db.close)
        async with db.pool.acquire() as conn:
            await migrate(conn)
        yield db


def private_admin() -> dict[str, str]:
    """Config settings for an orchestrator embedded in one process (`cidev run`, tests,
    benchmarks), which no operator administers: the Admin service on any free loopback port,
    behind a random token made for this process and shown to no one. Authentication stays
    on, and two such processes (or one beside a real orchestrator) never share a port."""
    return {"admin_listen": "127.0.0.1:0", "admin_token": random_token()}


@asynccontextmanager
async def running(config: OrchestratorConfig, *, backend: VMBackend,
                  secrets: Mapping[str, str] | None = None,
                  embedded_name: str = EMBEDDED_DATABASE, schema: str | None = None,
                  grace: float = 0.0, hand_back: bool = False,
                  supervisor: Supervisor | None = None) -> AsyncIterator[Orchestrator]:
    """A started orchestrator on `config`'s database and broker; stopped (jobs given `grace`
    seconds, then ended, or re-queued with `hand_back`) and everything released on exit.
    Its tasks run under `supervisor` (else one of its own, `orchestrator.supervisor`)."""
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(
            database(config, embedded_name=embedded_name, schema=schema))
        broker = open_broker(config.amqp_url, config.broker_prefix)
        await broker.connect()
        stack.push_async_callback(broker.close)
        orchestrator = Orchestrator(config, db=db, broker=broker, backend=backend,
                                    secrets=secrets, supervisor=supervisor)
        stack.push_async_callback(orchestrator.stop, grace, hand_back=hand_back)
        await orchestrator.start()
        yield orchestrator
