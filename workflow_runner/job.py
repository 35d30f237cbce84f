"""One job from checkout to outcome: setup, steps, timeouts, cancel, artifacts.

Outcome rules: the first failing step ends the job `failure` and the later steps are reported
`skipped`; a step or job timeout ends it `timed_out`, a `CANCEL` `cancelled`, a checkout that
cannot be done `error` (an infrastructure fault, never the user's). Artifacts are uploaded after
the steps whatever they did, unless the job was cancelled or never got a tree; a file holding
a secret is not uploaded and fails a job that would otherwise succeed (`artifact_scan`).
"""
from __future__ import annotations

import asyncio
import logging
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.masking import SecretMasker
from common.observability import tracer
from common.text import plural
from protos import runner_pb2
from workflow_runner import artifact_scan, artifacts, inputs
from workflow_runner.checkout import checkout
from workflow_runner.client import OrchestratorError, RunnerClient
from workflow_runner.heartbeat import Heartbeat
from workflow_runner.logs import NO_STEP, LogShipper, now_ms
from workflow_runner.process import Ending, Finished, ProcessGroups

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

STEP_STATE = {Ending.TIMED_OUT: runner_pb2.STEP_TIMED_OUT,
              Ending.CANCELLED: runner_pb2.STEP_CANCELLED}
JOB_OUTCOME = {Ending.TIMED_OUT: runner_pb2.JOB_TIMED_OUT,
               Ending.CANCELLED: runner_pb2.JOB_CANCELLED}


@dataclass(frozen=True)
class Outcome:
    outcome: int  # runner_pb2.JobOutcome
    message: str


def shell_argv(command: str) -> list[str]:
    """`bash -e -o pipefail -c command`, or `sh -e -c command` where bash is absent."""
    bash = shutil.which("bash")
    if bash:
        return [bash, "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", command]
    return [shutil.which("sh") or "/bin/sh", "-e", "-c", command]


def base_env(inherited: Mapping[str, str]) -> dict[str, str]:
    """The runner's own environment minus its bootstrap (`SOLSTICE_*`, the token above all)."""
    return {k: v for k, v in inherited.items() if not k.startswith("SOLSTICE_")}


def step_env(job: runner_pb2.Job, workspace: Path, inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment of every step: `base_env`, the job's env, its secrets, then the CI
    variables, which a job cannot override."""
    env = base_env(inherited)
    env.update(job.env)
    env.update(job.secrets)
    env.update(CI="true", SOLSTICE_JOB_ID=job.job_id, SOLSTICE_RUN_ID=job.run_id,
               SOLSTICE_JOB_KEY=job.job_key, SOLSTICE_COMMIT=job.checkout.commit,
               SOLSTICE_REF=job.checkout.ref, SOLSTICE_WORKSPACE=str(workspace))
    for axis, value in job.matrix.items():
        env["SOLSTICE_MATRIX_" + re.sub(r"[^A-Z0-9]", "_", axis.upper())] = value
    return env


def _step_name(step: runner_pb2.StepSpec) -> str:
    return step.name or f"step {step.index + 1}"  # numbered from 1, as everywhere shown


class JobExecution:
    """Runs `job` in `workspace`, reporting each step; `run` returns the job's outcome."""

    def __init__(self, job: runner_pb2.Job, *, workspace: Path, client: RunnerClient,
                 shipper: LogShipper, heartbeat: Heartbeat, masker: SecretMasker,
                 groups: ProcessGroups, inherited_env: Mapping[str, str]) -> None:
        self.job = job
        self.workspace = workspace
        self.client = client
        self.shipper = shipper
        self.heartbeat = heartbeat
        self.masker = masker
        self.groups = groups
        self.inherited_env = dict(inherited_env)
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + job.timeout_seconds if job.timeout_seconds else None

    async def run(self) -> Outcome:
        job = self.job
        with _tracer.start_as_current_span("checkout"):
            result = await checkout(job.checkout, self.workspace,
                                    base_env=base_env(self.inherited_env),
                                    groups=self.groups, shipper=self.shipper, masker=self.masker,
                                    deadline=self.deadline, cancel=self.heartbeat.cancelled)
        if not result.ok:
            outcome = (self._ended(result.ending, "checkout") if result.ending is not Ending.EXITED
                       else Outcome(runner_pb2.JOB_ERROR, result.error))
            self.shipper.system(NO_STEP, outcome.message)
            await self._skip(job.steps)
            return outcome
        env = step_env(job, self.workspace, self.inherited_env)
        outcome = await self._inputs() if job.has_inputs else None
        if outcome is None and job.setup_script:
            outcome = await self._setup(env)
        for position, step in enumerate(job.steps):
            if outcome is not None:
                await self._skip(job.steps[position:])
                break
            outcome = await self._step(step, env)
        if outcome is None or outcome.outcome != runner_pb2.JOB_CANCELLED:
            outcome = await self._artifacts(outcome)
        if outcome is None:
            ran = sum(1 for step in job.steps if step.enabled)
            outcome = Outcome(runner_pb2.JOB_SUCCESS, f"{plural(ran, 'step')} succeeded, "
                                                      f"{len(job.steps) - ran} skipped")
        return outcome

    async def _inputs(self) -> Outcome | None:
        """The needed jobs' artifacts under inputs/; a damaged one is the infrastructure's
        fault (the job errs, its steps skipped)."""
        try:
            with _tracer.start_as_current_span("inputs"):
                fetched = await inputs.fetch(self.client, self.workspace)
        except (inputs.InputError, OrchestratorError, OSError) as exc:
            self.shipper.system(NO_STEP, f"fetching the needed jobs' artifacts failed: {exc}")
            return Outcome(runner_pb2.JOB_ERROR, f"inputs: {exc}")
        if fetched.files:
            self.shipper.system(NO_STEP, f"inputs: {plural(fetched.files, 'file')} "
                                         f"({plural(fetched.bytes, 'byte')}) under inputs/")
        return None

    async def _setup(self, env: dict[str, str]) -> Outcome | None:
        script = PurePosixPath(self.job.setup_script)
        path = self.workspace / script
        if script.is_absolute() or ".." in script.parts or not path.is_file():
            outcome = Outcome(runner_pb2.JOB_FAILURE,
                              f"setup script {self.job.setup_script!r} is not a file in the "
                              "repository")
            self.shipper.system(NO_STEP, outcome.message)
            return outcome
        self.shipper.system(NO_STEP, f"running setup script {script}")
        argv = shell_argv(". " + shlex.quote(f"./{script}"))
        with _tracer.start_as_current_span("setup"):
            finished = await self._run(argv, env, NO_STEP, self.deadline)
        if finished.ending is not Ending.EXITED:
            outcome = self._ended(finished.ending, "the setup script")
        elif finished.exit_code != 0:
            outcome = Outcome(runner_pb2.JOB_FAILURE,
                              f"setup script {script} failed with exit code {finished.exit_code}")
        else:
            return None
        self.shipper.system(NO_STEP, outcome.message)
        return outcome

    async def _step(self, step: runner_pb2.StepSpec, env: dict[str, str]) -> Outcome | None:
        """Run one step; None when it succeeded (or was skipped) and the job goes on."""
        name = _step_name(step)
        if not step.enabled:
            await self._report(step.index, runner_pb2.STEP_SKIPPED)
            return None
        if self.heartbeat.cancelled.is_set():
            await self._report(step.index, runner_pb2.STEP_SKIPPED)
            return self._ended(Ending.CANCELLED, name)
        await self._report(step.index, runner_pb2.STEP_RUNNING)
        loop = asyncio.get_running_loop()
        step_deadline = loop.time() + step.timeout_seconds if step.timeout_seconds else None
        deadline = min((d for d in (step_deadline, self.deadline) if d is not None), default=None)
        self.heartbeat.current_step = step.index
        with _tracer.start_as_current_span(
                "step", attributes={"step.index": step.index, "step.name": name}) as span:
            finished = await self._run(shell_argv(step.run), env, step.index, deadline)
            span.set_attribute("step.exit_code", finished.exit_code)
        log.info("step finished", extra={"step": name, "ending": finished.ending.value,
                                         "exit_code": finished.exit_code,
                                         "duration_ms": finished.duration_ms})
        if finished.ending is Ending.EXITED:
            state = runner_pb2.STEP_SUCCESS if finished.exit_code == 0 else runner_pb2.STEP_FAILURE
        else:
            state = STEP_STATE[finished.ending]
        await self._report(step.index, state, finished)
        if finished.ending is Ending.TIMED_OUT and step_deadline is not None and (
                self.deadline is None or step_deadline <= self.deadline):
            outcome = Outcome(runner_pb2.JOB_TIMED_OUT,
                              f"step {name!r} timed out after {step.timeout_seconds} s")
        elif finished.ending is not Ending.EXITED:
            outcome = self._ended(finished.ending, f"step {name!r}")
        elif finished.exit_code != 0:
            outcome = Outcome(runner_pb2.JOB_FAILURE,
                              f"step {name!r} failed with exit code {finished.exit_code}")
        else:
            return None
        self.shipper.system(step.index, outcome.message)
        return outcome

    def _ended(self, ending: Ending, during: str) -> Outcome:
        """The outcome of a timeout or cancel that interrupted `during`."""
        if ending is Ending.CANCELLED:
            return Outcome(runner_pb2.JOB_CANCELLED,
                           f"cancelled during {during}: {self.heartbeat.cancel_reason}")
        return Outcome(runner_pb2.JOB_TIMED_OUT,
                       f"job timed out after {self.job.timeout_seconds} s during {during}")

    async def _run(self, argv: list[str], env: dict[str, str], index: int,
                   deadline: float | None) -> Finished:
        return await self.groups.run(argv, cwd=self.workspace, env=env, step_index=index,
                                     shipper=self.shipper, masker=self.masker,
                                     deadline=deadline, cancel=self.heartbeat.cancelled)

    async def _skip(self, steps: list[runner_pb2.StepSpec]) -> None:
        for step in steps:
            await self._report(step.index, runner_pb2.STEP_SKIPPED)

    async def _report(self, index: int, state: int, finished: Finished | None = None) -> None:
        await self.client.report_step(runner_pb2.StepReport(
            job_id=self.job.job_id, step_index=index, state=state,
            exit_code=finished.exit_code if finished else 0,
            duration_ms=finished.duration_ms if finished else 0,
            timestamp_unix_ms=now_ms()))

    async def _artifacts(self, outcome: Outcome | None) -> Outcome | None:
        patterns = list(self.job.artifact_patterns)
        collected = artifacts.collect(self.workspace, [*patterns, artifacts.OUT_PATTERN])
        for problem in collected.problems:
            self.shipper.system(NO_STEP, problem)
        if not collected.files:
            if patterns:
                self.shipper.system(NO_STEP, "no files match the artifact patterns")
            return outcome
        outcome, files = await self._refuse_secrets(outcome, collected.files)
        if not files:
            return outcome
        try:
            with _tracer.start_as_current_span("artifacts"):
                sent = await artifacts.upload(self.client, files)
        except artifacts.ArtifactRefused as exc:
            # What the job produced was refused (too large, uploaded twice): the job's fault.
            self.shipper.system(NO_STEP, f"artifact upload refused: {exc}")
            return outcome or Outcome(runner_pb2.JOB_FAILURE, f"artifact upload refused: {exc}")
        except (OrchestratorError, OSError) as exc:
            self.shipper.system(NO_STEP, f"artifact upload failed: {exc}")
            return outcome or Outcome(runner_pb2.JOB_ERROR, f"artifact upload failed: {exc}")
        self.shipper.system(NO_STEP, f"uploaded {plural(sent.files, 'artifact file')} "
                                     f"({plural(sent.bytes, 'byte')})")
        return outcome

    async def _refuse_secrets(self, outcome: Outcome | None, files: list[artifacts.Artifact]
                              ) -> tuple[Outcome | None, list[artifacts.Artifact]]:
        """Drop the files that hold a secret, saying so in the log; a job that would have
        succeeded fails. Returns the outcome and the files to upload."""
        try:
            refused = await artifact_scan.refused(files, self.masker)
        except OSError as exc:
            self.shipper.system(NO_STEP, f"artifact upload failed: {exc}")
            return outcome or Outcome(runner_pb2.JOB_ERROR, f"artifact upload failed: {exc}"), []
        for artifact in refused:
            self.shipper.system(NO_STEP, f"artifact {artifact.path} not uploaded: it contains a "
                                         "secret (or an encoding of one)")
        if refused and outcome is None:
            names = self.masker.mask_text(", ".join(artifact.path for artifact in refused))
            outcome = Outcome(runner_pb2.JOB_FAILURE,
                              f"artifacts refused because they contain a secret: {names}")
        return outcome, [artifact for artifact in files if artifact not in refused]
