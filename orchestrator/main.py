"""Entry point of `solstice-orchestrator`.

Standalone by default (embedded PostgreSQL under the state directory, in-process broker);
multi-host when `--database-url` and `--amqp-url` (or the config file / environment) name
real servers. Settings: defaults < `[orchestrator]` of the TOML file (`--config` or
`$SOLSTICE_CONFIG`) < `SOLSTICE_ORCHESTRATOR__*` < flags; docs/config.md lists every key.

SIGTERM (and SIGINT) drain: stop consuming, let running jobs finish for `drain_timeout`
seconds, hand the rest back to the queue for other hosts, deregister, exit 0.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from common.config import load_config
from common.errors import ConfigError, SolsticeError
from common.observability import setup_observability
from orchestrator.backends.base import VMBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.service import ServiceFailed
from orchestrator.standalone import running

log = logging.getLogger("orchestrator")

EPILOG = """\
The `local` backend runs each job as a plain child process of the orchestrator, with its
user, network and files: NO ISOLATION. It is refused unless --allow-local-backend (or
allow_local_backend = true) is given. Use it for development only.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solstice-orchestrator",
        description="Take runs and jobs from the queue and run each job in a throw-away machine.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", help="TOML file ([orchestrator] table)")
    parser.add_argument("--standalone", action="store_true",
                        help="embedded PostgreSQL and in-process queue, ignoring any URLs in "
                             "the config file or environment (the default when none are set)")
    parser.add_argument("--database-url", metavar="URL", help="PostgreSQL DSN (multi-host)")
    parser.add_argument("--amqp-url", metavar="URL", help="RabbitMQ URL (multi-host)")
    parser.add_argument("--capacity", metavar="LABEL=N,...",
                        help="jobs this host runs at once per runs_on label, e.g. "
                             "illumos-stable=4,ubuntu-22.04=2")
    parser.add_argument("--host-name", metavar="NAME",
                        help="this host's name in the registry (default: the machine's)")
    parser.add_argument("--backend", metavar="NAME", help="VM backend (default: local)")
    parser.add_argument("--allow-local-backend", action="store_true", default=None,
                        help="permit the local backend (no isolation, see below)")
    parser.add_argument("--grpc-listen", metavar="HOST:PORT",
                        help="where the Runner service listens (port 0: any free port)")
    parser.add_argument("--grpc-advertise", metavar="HOST:PORT",
                        help="the address runners dial, if not the listen address")
    parser.add_argument("--broker-prefix", metavar="PREFIX", help="queue and exchange names")
    parser.add_argument("--web-listen", metavar="HOST:PORT",
                        help="serve the web log pages (the forges' status links) here")
    parser.add_argument("--public-url", metavar="URL",
                        help="base URL of the web log pages as users reach them")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="embedded database and local machines live here")
    parser.add_argument("--drain-timeout", metavar="SECONDS", type=float,
                        help="on SIGTERM, how long running jobs may finish before hand-back")
    parser.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")
    return parser


def load(args: argparse.Namespace) -> OrchestratorConfig:
    """The configuration from file, environment and the flags the user gave."""
    if args.standalone and (args.database_url or args.amqp_url):
        raise ConfigError("--standalone cannot be combined with --database-url / --amqp-url",
                          hint="drop --standalone to run multi-host")
    cli: dict[str, Any] = {key: getattr(args, key) for key in (
        "database_url", "amqp_url", "capacity", "host_name", "backend", "allow_local_backend",
        "grpc_listen", "grpc_advertise", "broker_prefix", "state_dir", "drain_timeout",
        "log_level", "web_listen", "public_url")}
    config = load_config(OrchestratorConfig, path=args.config, section="orchestrator", cli=cli)
    if args.standalone:
        config = config.model_copy(update={"database_url": None, "amqp_url": None})
    if bool(config.database_url) != bool(config.amqp_url):
        raise ConfigError("multi-host mode needs both database_url and amqp_url",
                          hint="give both (--database-url and --amqp-url), or neither for "
                               "standalone")
    return config


def make_backend(config: OrchestratorConfig, config_path: str | None = None) -> VMBackend:
    """The configured VM backend; its own settings come from the same config file."""
    if config.backend == "local":
        if not config.allow_local_backend:
            raise ConfigError("the local backend runs jobs without any isolation and is off",
                              hint="pass --allow-local-backend (development only), or choose "
                                   "another --backend")
        from orchestrator.backends.local import LocalBackend

        return LocalBackend(config.state_dir / "machines")
    if config.backend == "bhyve":
        from orchestrator.backends.bhyve import BhyveBackend, load_bhyve_settings

        return BhyveBackend(load_bhyve_settings(config_path))
    if config.backend == "qemu":
        from orchestrator.backends.qemu import QemuBackend, load_qemu_settings

        return QemuBackend(load_qemu_settings(config_path))
    raise ConfigError(f"unknown backend {config.backend!r}",
                      hint="this build offers: bhyve (illumos), qemu (Linux), local (development)")


async def serve(config: OrchestratorConfig, config_path: str | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain; `ServiceFailed` when a part the host cannot run
    without stopped (its jobs are handed back at once)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    mode = "multi-host" if config.amqp_url else "standalone"
    async with running(config, backend=make_backend(config, config_path), grace=config.drain_timeout,
                       hand_back=True) as orchestrator:
        log.info("ready", extra={"host": config.host_name, "mode": mode})
        assert orchestrator.failure is not None
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopping, orchestrator.failure}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        failure = orchestrator.failure.result() if orchestrator.failure.done() else None
        if failure is not None:
            log.critical("stopping so that the service manager restarts this host: %s", failure,
                         extra={"host": config.host_name})
        else:
            log.info("draining", extra={"host": config.host_name,
                                        "drain_timeout": config.drain_timeout})
    if failure is not None:
        raise ServiceFailed(f"the orchestrator failed: {failure}",
                            hint="see the log above; systemd restarts it (Restart=on-failure)")
    log.info("drained; exiting", extra={"host": config.host_name})


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load(args)
    except SolsticeError as exc:
        print(f"solstice-orchestrator: error: {exc}", file=sys.stderr)
        return 2
    setup_observability("solstice-orchestrator", level=config.log_level)
    try:
        asyncio.run(serve(config, args.config))
    except ServiceFailed as exc:
        print(f"solstice-orchestrator: error: {exc}", file=sys.stderr)
        return 1
    except SolsticeError as exc:
        print(f"solstice-orchestrator: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
