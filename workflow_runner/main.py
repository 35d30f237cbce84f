"""Entry point of `solstice-runner`, the agent that runs one job inside its VM."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from common.errors import ConfigError, SolsticeError
from common.observability import setup_observability
from workflow_runner.agent import run_agent
from workflow_runner.client import OrchestratorError, OrchestratorUnreachable, RunnerAuthError
from workflow_runner.config import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH, load_settings

log = logging.getLogger("workflow_runner")

EXIT_REPORTED = 0
EXIT_CONFIG = 2
EXIT_UNAUTHENTICATED = 3
EXIT_ORCHESTRATOR = 4
EXIT_INTERRUPTED = 5

EPILOG = f"""\
bootstrap (lowest precedence first):
  1. a TOML file with orchestrator_url, job_id and token: --config PATH, else
     ${CONFIG_PATH_ENV}, else {DEFAULT_CONFIG_PATH} when it exists (cloud-init writes it)
  2. the environment: SOLSTICE_ORCHESTRATOR_URL (host:port, or grpcs://host:port for TLS),
     SOLSTICE_JOB_ID, SOLSTICE_TOKEN, SOLSTICE_WORKSPACE; tuning: SOLSTICE_HEARTBEAT_SECONDS,
     SOLSTICE_KILL_GRACE_SECONDS, SOLSTICE_UNREACHABLE_TIMEOUT_SECONDS, SOLSTICE_LOG_LEVEL
  3. flags (--workspace)
  The token is never accepted as a flag: command lines are visible to every user.

exit status:
  {EXIT_REPORTED}  the job ran and its result was reported (whatever the outcome)
  {EXIT_CONFIG}  the bootstrap is missing or invalid
  {EXIT_UNAUTHENTICATED}  the orchestrator refused the token (UNAUTHENTICATED)
  {EXIT_ORCHESTRATOR}  the orchestrator stayed unreachable or answered with an error
  {EXIT_INTERRUPTED}  stopped by SIGTERM/SIGINT (the job's processes were killed first)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solstice-runner",
        description="Run one Solstice CI job: fetch it from the orchestrator, check out the "
                    "commit, run its steps, stream masked logs, upload artifacts, report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", help="bootstrap TOML file")
    parser.add_argument("--workspace", metavar="DIR",
                        help="directory for the job's tree (default: a new temporary "
                             "directory under /var/tmp, removed at the end)")
    return parser


def _first_error(exc: BaseException) -> BaseException:
    """The first non-group error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _run(settings_args: dict[str, str | None], config: str | None) -> int:
    try:
        settings = load_settings(config=config, cli=settings_args)
    except ConfigError as exc:
        print(f"solstice-runner: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # The runner's stderr is the VM console, read by a human when a job ends `error`: spans
    # go to OTLP when configured, to the console only with SOLSTICE_TRACE_CONSOLE=1.
    setup_observability("solstice-runner", level=settings.log_level, console_spans=False)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await run_agent(settings)
    except asyncio.CancelledError:
        log.error("stopped by a signal before the result was reported")
        return EXIT_INTERRUPTED
    except BaseException as raised:  # task groups wrap what their tasks raised
        exc = _first_error(raised)
        if isinstance(exc, RunnerAuthError):
            log.error("token refused, stopping: %s", exc, extra={"job_id": settings.job_id})
            return EXIT_UNAUTHENTICATED
        if isinstance(exc, (OrchestratorError, OrchestratorUnreachable)):
            log.error("could not report to the orchestrator: %s", exc)
            return EXIT_ORCHESTRATOR
        if isinstance(exc, SolsticeError):
            log.error("%s", exc)
            return EXIT_ORCHESTRATOR
        raise
    return EXIT_REPORTED


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(_run({"workspace": args.workspace}, args.config))


if __name__ == "__main__":
    sys.exit(main())
