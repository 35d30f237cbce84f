"""Entry point of `solstice-github-integration` (the shared one: `common.forge.main`).

    solstice-github-integration [--config FILE] [--listen-host H] [--listen-port P]
                                [--database-url DSN] [--amqp-url URL]

Settings come from `[github_integration]` of the config file, `SOLSTICE_GITHUB_INTEGRATION__*`
variables and these flags (see `github_integration.config`). The service refuses to start
without the App's id, private key and webhook secret.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

import asyncpg

from common.broker import Broker
from common.forge import main as entry
from common.supervise import Supervisor
from github_integration.api import make_http_client
from github_integration.auth import load_private_key
from github_integration.config import SECTION, GitHubIntegrationConfig
from github_integration.db import open_database
from github_integration.service import GitHubIntegration
from github_integration.webhook import FORGE


@contextlib.asynccontextmanager
async def open_service(config: GitHubIntegrationConfig, pool: asyncpg.Pool, broker: Broker,
                       supervisor: Supervisor) -> AsyncIterator[GitHubIntegration]:
    """The service with its GitHub HTTP client, closed on the way out."""
    private_key = load_private_key(config.private_key_pem())
    async with make_http_client(config.api_url, timeout=config.api_timeout) as http:
        yield GitHubIntegration(config, pool, broker, http, private_key, supervisor=supervisor)


ENTRY = entry.EntryPoint(
    prog="solstice-github-integration", description="GitHub App webhooks in, check runs out.",
    config=GitHubIntegrationConfig, section=SECTION, open_service=open_service,
    forges=(FORGE,), open_database=open_database)


def main(argv: list[str] | None = None) -> int:
    return entry.main(ENTRY, argv)


if __name__ == "__main__":
    sys.exit(main())
