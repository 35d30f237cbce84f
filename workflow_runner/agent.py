"""The runner's life: fetch the job, run it with logs and heartbeat alongside, report, exit.

When the orchestrator holds the failed job's machine (the ReportResult ack says for how long),
the runner does not exit: it keeps the heartbeat and the workspace and serves debug sessions
(`workflow_runner.debug`) until the orchestrator ends the hold.

The log shipper and the heartbeat run as tasks next to the job; if either meets a final error
(token refused, orchestrator gone for good) the task group cancels the job, whose process
groups are killed on the way out.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from common.errors import SolsticeError
from common.masking import MIN_SECRET_LENGTH, SecretMasker
from protos import runner_pb2
from workflow_runner.client import (
    OrchestratorError,
    OrchestratorUnreachable,
    RunnerAuthError,
    RunnerClient,
    make_channel,
)
from workflow_runner.config import RunnerSettings
from workflow_runner.debug import DebugServer
from workflow_runner.heartbeat import Heartbeat
from workflow_runner.job import JobExecution, Outcome
from workflow_runner.logs import NO_STEP, LogShipper
from workflow_runner.process import ProcessGroups

log = logging.getLogger(__name__)

FATAL = (RunnerAuthError, OrchestratorError, OrchestratorUnreachable)
OUTCOME_NAMES = {value: name for name, value in runner_pb2.JobOutcome.items()}


def job_masker(job: runner_pb2.Job, token: str) -> SecretMasker:
    """Every value that must never appear in a log line of this job."""
    values = [*job.secrets.values(), job.checkout.password]
    url_password = urlsplit(job.checkout.repo_url).password
    if url_password:
        values.append(url_password)
    return SecretMasker((v for v in values if v), verbatim=[token])


def make_workspace(settings: RunnerSettings) -> tuple[Path, bool]:
    """The workspace directory, and whether the runner created it (and so removes it)."""
    try:
        if settings.workspace:
            path = Path(settings.workspace)
            path.mkdir(parents=True, exist_ok=True)
            return path.resolve(), False
        base = "/var/tmp" if os.path.isdir("/var/tmp") else None
        return Path(tempfile.mkdtemp(prefix="solstice-job-", dir=base)), True
    except OSError as exc:
        raise SolsticeError(f"cannot create the workspace {settings.workspace or '/var/tmp/...'}: "
                            f"{exc.strerror}") from exc


async def run_agent(settings: RunnerSettings) -> None:
    """Run the job of `settings` and report its result; raises a `FATAL` error otherwise."""
    async with make_channel(settings.orchestrator_url) as channel:
        client = RunnerClient(channel, settings.job_id, settings.token,
                              settings.unreachable_timeout_seconds)
        job = await client.get_job()
        log.info("job received", extra={"job_id": job.job_id, "job_key": job.job_key,
                                        "steps": len(job.steps)})
        masker = job_masker(job, settings.token)
        shipper = LogShipper(client, masker, flush_ms=settings.log_flush_ms,
                             chunk_bytes=settings.log_chunk_bytes,
                             memory_bytes=settings.log_memory_bytes)
        if masker.too_short:
            shipper.system(NO_STEP, f"{masker.too_short} secret value(s) shorter than "
                                    f"{MIN_SECRET_LENGTH} characters are not masked")
        heartbeat = Heartbeat(client, settings.heartbeat_seconds)
        workspace: Path | None = None
        created = False
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(shipper.run())
                tasks.create_task(heartbeat.run())
                try:
                    workspace, created = make_workspace(settings)
                except SolsticeError as exc:
                    outcome = Outcome(runner_pb2.JOB_ERROR, str(exc))
                else:
                    outcome = await _execute(job, settings, workspace, client, shipper,
                                             heartbeat, masker)
                name = OUTCOME_NAMES[outcome.outcome]
                shipper.system(NO_STEP,
                               f"job {name.removeprefix('JOB_').lower()}: {outcome.message}")
                last_seq = await shipper.close()
                ack = await client.report_result(runner_pb2.JobResult(
                    job_id=job.job_id, outcome=outcome.outcome, message=outcome.message,
                    last_log_seq=last_seq))
                log.info("result reported", extra={"outcome": name, "last_log_seq": last_seq})
                if ack.hold_seconds and workspace is not None:
                    log.info("the machine is held for debugging",
                             extra={"seconds": ack.hold_seconds})
                    await DebugServer(client, job, workspace, os.environ).run()
                heartbeat.stop()
        finally:
            if created and workspace is not None:
                shutil.rmtree(workspace, ignore_errors=True)


async def _execute(job: runner_pb2.Job, settings: RunnerSettings, workspace: Path,
                   client: RunnerClient, shipper: LogShipper, heartbeat: Heartbeat,
                   masker: SecretMasker) -> Outcome:
    """Run the job; a fault of the runner itself (a bug) becomes `error`."""
    groups = ProcessGroups(settings.kill_grace_seconds)
    try:
        return await JobExecution(job, workspace=workspace, client=client, shipper=shipper,
                                  heartbeat=heartbeat, masker=masker, groups=groups,
                                  inherited_env=os.environ).run()
    except FATAL:
        raise
    except SolsticeError as exc:
        return Outcome(runner_pb2.JOB_ERROR, str(exc))
    except Exception as exc:
        log.exception("the runner failed while running the job")
        return Outcome(runner_pb2.JOB_ERROR, f"the runner failed: {exc}")
    finally:
        await groups.kill_all()
