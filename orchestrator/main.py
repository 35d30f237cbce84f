"""Entry point of `solstice-orchestrator`.

Standalone by default (embedded PostgreSQL under the state directory, in-process broker);
multi-host when `--database-url` and `--amqp-url` (or the config file / environment) name
real servers. Settings: defaults < `[orchestrator]` of the TOML file (`--config` or
`$SOLSTICE_CONFIG`) < `SOLSTICE_ORCHESTRATOR__*` < flags; docs/config.md lists every key.

SIGTERM (and SIGINT) drain: stop consuming, let running jobs finish for `drain_timeout`
seconds, hand the rest back to the queue for other hosts, deregister, exit 0. When one of its
tasks fails (`common.supervise`), it hands its jobs back at once, deregisters and exits 1, so
that systemd / SMF restart it.
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
from common.supervise import Supervisor, TaskFailed
from orchestrator.adminauth import resolve_access
from orchestrator.backends.base import VMBackend
from orchestrator.blobstore import filesystem_root
from orchestrator.config import OrchestratorConfig
from orchestrator.secretstore import load_keyring
from orchestrator.standalone import running

log = logging.getLogger("orchestrator")

EPILOG = """\
The `local` backend runs each job as a plain child process of the orchestrator, with its
user, network and files: NO ISOLATION. It is refused unless --allow-local-backend (or
allow_local_backend = true) is given. Use it for development only.

The Admin service (ciadm) listens on --admin-listen, apart from the Runner port that job
machines reach, and demands the admin token (admin_token_file); without one the orchestrator
does not start. See docs/SECURITY.md.

`solstice-orchestrator selftest [--backend bhyve|qemu|local] [--label L]` proves this host:
one two-step job on one machine of the label, each stage timed, the first failure explained
(`solstice-orchestrator selftest --help`).
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
    parser.add_argument("--admin-listen", metavar="HOST:PORT",
                        help="where the Admin service (ciadm) listens; keep it on loopback "
                             "(default 127.0.0.1:50552)")
    parser.add_argument("--admin-token-file", metavar="PATH",
                        help="file holding the admin token ciadm and the web pages must present")
    parser.add_argument("--insecure-admin-no-auth", action="store_true", default=None,
                        help="DEVELOPMENT ONLY: serve the Admin service without a token "
                             "(refused unless --admin-listen is a loopback address)")
    parser.add_argument("--broker-prefix", metavar="PREFIX", help="queue and exchange names")
    parser.add_argument("--web-listen", metavar="HOST:PORT",
                        help="serve the web log pages (the forges' status links) here")
    parser.add_argument("--public-url", metavar="URL",
                        help="base URL of the web log pages as users reach them")
    parser.add_argument("--web-access", choices=("signed", "token", "public"),
                        help="signed (default): the forges' links open their own run, an "
                             "admin token every page; token: an admin token only; public: "
                             "every job's log readable by anyone reaching the pages")
    parser.add_argument("--web-grant-key-file", metavar="PATH",
                        help="key the web links are signed with, the same on every host "
                             "(default: derived from the admin token)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="embedded database and local machines live here")
    parser.add_argument("--blob-store-path", metavar="DIR",
                        help="artifacts go here (the filesystem blob store); multi-host: a "
                             "path every host mounts")
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
        "log_level", "web_listen", "public_url", "admin_listen", "admin_token_file",
        "insecure_admin_no_auth", "web_access", "web_grant_key_file")}
    if args.blob_store_path:
        cli["blob_store"] = {"path": args.blob_store_path}
    config = load_config(OrchestratorConfig, path=args.config, section="orchestrator", cli=cli)
    if args.standalone:
        config = config.model_copy(update={"database_url": None, "amqp_url": None})
    if bool(config.database_url) != bool(config.amqp_url):
        raise ConfigError("multi-host mode needs both database_url and amqp_url",
                          hint="give both (--database-url and --amqp-url), or neither for "
                               "standalone")
    resolve_access(config)  # no admin token: refuse now, before any database starts
    load_keyring(config.secret_keys)  # likewise an unreadable secret key
    if config.blob_store.kind == "filesystem":  # likewise a store each host would keep alone
        filesystem_root(config.blob_store, state_dir=config.state_dir,
                        multi_host=bool(config.database_url))
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
        from orchestrator.backends.qemu import QemuBackend, load_qemu_settings, refuse_admin_forwards

        settings = load_qemu_settings(config_path)
        refuse_admin_forwards(settings.forwards, config.admin_listen)
        return QemuBackend(settings)
    raise ConfigError(f"unknown backend {config.backend!r}",
                      hint="this build offers: bhyve (illumos), qemu (Linux), local (development)")


async def serve(config: OrchestratorConfig, config_path: str | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain; raise `TaskFailed` after a task failed."""
    supervisor = Supervisor()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.stop)
    mode = "multi-host" if config.amqp_url else "standalone"
    async with running(config, backend=make_backend(config, config_path), grace=config.drain_timeout,
                       hand_back=True, supervisor=supervisor):
        log.info("ready", extra={"host": config.host_name, "mode": mode})
        await supervisor.wait()
        log.info("draining", extra={"host": config.host_name,
                                    "drain_timeout": config.drain_timeout})
    log.info("drained; exiting", extra={"host": config.host_name})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["selftest"]:
        from orchestrator import selftest

        return selftest.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        config = load(args)
    except SolsticeError as exc:
        print(f"solstice-orchestrator: error: {exc}", file=sys.stderr)
        return 2
    setup_observability("solstice-orchestrator", level=config.log_level)
    try:
        asyncio.run(serve(config, args.config))
    except TaskFailed as exc:
        print(f"solstice-orchestrator: error: {exc}", file=sys.stderr)
        return 1
    except SolsticeError as exc:
        print(f"solstice-orchestrator: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
