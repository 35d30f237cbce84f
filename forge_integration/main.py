"""Entry point of `solstice-forge-integration`.

    solstice-forge-integration [--config FILE] [--listen-host H] [--listen-port P]
                               [--database-url DSN] [--amqp-url URL] [--insecure-no-signature]

Settings come from `[forge_integration]` of the config file, `SOLSTICE_FORGE_INTEGRATION__*`
variables and these flags (see `forge_integration.config`). Without any webhook secret the
service refuses to start, unless `--insecure-no-signature` is given (development only).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from common.broker import open_broker
from common.config import load_config
from common.errors import SolsticeError
from common.forge.migrate import open_pool
from common.http import serve
from common.observability import setup_observability
from common.supervise import Supervisor, TaskFailed
from forge_integration.api import ForgejoApi
from forge_integration.app import ForgeIntegration
from forge_integration.config import SECTION, ForgeIntegrationConfig

log = logging.getLogger("forge_integration")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="solstice-forge-integration",
                                     description="Forgejo/Gitea webhooks in, commit statuses out.")
    parser.add_argument("--config", help="TOML file (default: $SOLSTICE_CONFIG)")
    parser.add_argument("--listen-host")
    parser.add_argument("--listen-port", type=int)
    parser.add_argument("--database-url")
    parser.add_argument("--amqp-url")
    parser.add_argument("--insecure-no-signature", action="store_true", default=None,
                        help="accept unsigned webhooks (local development only)")
    return parser.parse_args(argv)


def clients_for(config: ForgeIntegrationConfig) -> dict[str, ForgejoApi]:
    """One API client per configured site."""
    return {kind: ForgejoApi(kind, site.api_url, site.token.get_secret_value(), timeout=site.timeout)
            for kind, site in config.sites.items()}


async def run(config: ForgeIntegrationConfig) -> None:
    """Serve until SIGTERM/SIGINT, then finish the requests in flight and close everything;
    raise `TaskFailed` (after the same shutdown) when the status outbox worker failed."""
    pool = await open_pool(config.database_url)
    broker = open_broker(config.amqp_url, config.broker_prefix)
    clients = clients_for(config)
    try:
        await broker.connect()
        supervisor = Supervisor()
        service = ForgeIntegration(config, pool, broker, clients, supervisor=supervisor)
        if config.insecure_no_signature:
            log.warning("accepting unsigned webhooks (--insecure-no-signature)")
        await serve(service.app(), config.listen_host, config.listen_port, ready=lambda url: log.info(
            "ready", extra={"url": url, "forges": ",".join(config.sites)}), supervisor=supervisor)
    finally:
        await broker.close()
        for client in clients.values():
            await client.close()
        await pool.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(ForgeIntegrationConfig, path=args.config, section=SECTION, cli={
            "listen_host": args.listen_host, "listen_port": args.listen_port,
            "database_url": args.database_url, "amqp_url": args.amqp_url,
            "insecure_no_signature": args.insecure_no_signature})
        config.check()
        # Spans go to OTLP when configured; printing one per webhook would flood stderr.
        setup_observability("solstice-forge-integration", level=config.log_level,
                            console_spans=False)
        asyncio.run(run(config))
    except TaskFailed as exc:
        print(f"solstice-forge-integration: {exc}", file=sys.stderr)
        return 1
    except SolsticeError as exc:
        print(f"solstice-forge-integration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
