"""Entry point of `solstice-forge-integration` (the shared one: `common.forge.main`).

    solstice-forge-integration [--config FILE] [--listen-host H] [--listen-port P]
                               [--database-url DSN] [--amqp-url URL] [--insecure-no-signature]

Settings come from `[forge_integration]` of the config file, `SOLSTICE_FORGE_INTEGRATION__*`
variables and these flags (see `forge_integration.config`). Without any webhook secret the
service refuses to start, unless `--insecure-no-signature` is given (development only).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

import asyncpg

from common.broker import Broker
from common.forge import main as entry
from common.supervise import Supervisor
from forge_integration.api import ForgejoApi
from forge_integration.config import SECTION, ForgeIntegrationConfig
from forge_integration.service import ForgeIntegration

log = logging.getLogger("forge_integration")


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--insecure-no-signature", action="store_true", default=None,
                        help="accept unsigned webhooks (local development only)")


def clients_for(config: ForgeIntegrationConfig) -> dict[str, ForgejoApi]:
    """One API client per configured site."""
    return {kind: ForgejoApi(kind, site.api_url, site.token.get_secret_value(), timeout=site.timeout)
            for kind, site in config.sites.items()}


@contextlib.asynccontextmanager
async def open_service(config: ForgeIntegrationConfig, pool: asyncpg.Pool, broker: Broker,
                       supervisor: Supervisor) -> AsyncIterator[ForgeIntegration]:
    """The service with one API client per site, closed on the way out."""
    clients = clients_for(config)
    if config.insecure_no_signature:
        log.warning("accepting unsigned webhooks (--insecure-no-signature)")
    try:
        yield ForgeIntegration(config, pool, broker, clients, supervisor=supervisor)
    finally:
        for client in clients.values():
            await client.close()


ENTRY = entry.EntryPoint(
    prog="solstice-forge-integration",
    description="Forgejo/Gitea webhooks in, commit statuses out.",
    config=ForgeIntegrationConfig, section=SECTION, open_service=open_service,
    forges=("forgejo", "gitea"), flags=_flags)


def main(argv: list[str] | None = None) -> int:
    return entry.main(ENTRY, argv)


if __name__ == "__main__":
    sys.exit(main())
