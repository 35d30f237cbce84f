"""Entry point of `solstice-github-integration`.

    solstice-github-integration [--config FILE] [--listen-host H] [--listen-port P]
                                [--database-url DSN] [--amqp-url URL]

Settings come from `[github_integration]` of the config file, `SOLSTICE_GITHUB_INTEGRATION__*`
variables and these flags (see `github_integration.config`). The service refuses to start
without the App's id, private key and webhook secret.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from common.broker import open_broker
from common.config import load_config
from common.errors import SolsticeError
from common.http import serve
from common.observability import setup_observability
from common.supervise import Supervisor, TaskFailed
from github_integration.api import make_http_client
from github_integration.auth import load_private_key
from github_integration.config import SECTION, GitHubIntegrationConfig
from github_integration.db import open_database
from github_integration.service import GitHubIntegration

log = logging.getLogger("github_integration")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="solstice-github-integration",
                                     description="GitHub App webhooks in, check runs out.")
    parser.add_argument("--config", help="TOML file (default: $SOLSTICE_CONFIG)")
    parser.add_argument("--listen-host")
    parser.add_argument("--listen-port", type=int)
    parser.add_argument("--database-url")
    parser.add_argument("--amqp-url")
    return parser.parse_args(argv)


async def run(config: GitHubIntegrationConfig) -> None:
    """Serve until SIGTERM/SIGINT; raise `TaskFailed` (after the same shutdown) when the check
    run outbox worker failed."""
    private_key = load_private_key(config.private_key_pem())
    pool = await open_database(config.database_url)
    broker = open_broker(config.amqp_url, config.broker_prefix)
    http = make_http_client(config.api_url, timeout=config.api_timeout)
    try:
        await broker.connect()
        supervisor = Supervisor()
        service = GitHubIntegration(config, pool, broker, http, private_key,
                                    supervisor=supervisor)
        await serve(service.app(), config.listen_host, config.listen_port, ready=lambda url: log.info(
            "ready", extra={"url": url, "app_id": config.app_id, "api_url": config.api_url}),
            supervisor=supervisor)
    finally:
        await broker.close()
        await http.aclose()
        await pool.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(GitHubIntegrationConfig, path=args.config, section=SECTION, cli={
            "listen_host": args.listen_host, "listen_port": args.listen_port,
            "database_url": args.database_url, "amqp_url": args.amqp_url})
        config.check()
        setup_observability("solstice-github-integration", level=config.log_level)
        asyncio.run(run(config))
    except TaskFailed as exc:
        print(f"solstice-github-integration: {exc}", file=sys.stderr)
        return 1
    except SolsticeError as exc:
        print(f"solstice-github-integration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
