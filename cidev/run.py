"""`cidev run [PATH]`: run a workflow on this machine through a standalone orchestrator.

The same path as production: the run goes through run intake, the job state machine, the
Runner gRPC service and the real runner process, with an embedded PostgreSQL (a fresh database
per invocation, dropped at the end) and the in-process queue. Jobs run on the `local` backend:
each in a copy of the current working tree (uncommitted changes included), as child processes
of `cidev` with your user's rights: NO ISOLATION.
"""
from __future__ import annotations

import os

# Runners are started while gRPC threads are busy; without this gRPC prints a line about
# skipped fork handlers on every job. Read when grpc is first imported, just below.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import getpass
import heapq
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cidev.workflow_file import UsageError, load, read_text, render
from common.messages import EventKind, JobState, Repo, RunRequest
from common.workflow import DEFAULT_PATH, Workflow, WorkflowError, expand
from orchestrator.api import JobSummary, OrchestratorAPI, RunSummary
from orchestrator.backends.local import LocalBackend
from orchestrator.config import OrchestratorConfig
from orchestrator.db.embedded import default_state_dir
from orchestrator.intake import RunOptions
from orchestrator.standalone import private_admin, running
from orchestrator.updates import JobUpdate, LogUpdate, StepUpdate, Update, Watch
from protos import runner_pb2

BACKENDS = ("local",)
NO_ISOLATION = ("Jobs run on the local backend: child processes of cidev, in a copy of your "
                "working tree, with your user's rights and network. NO ISOLATION: run only "
                "workflows you trust.")
REORDER_MS = 150
# One database in the embedded server for every `cidev run`; each invocation gets a schema of
# its own (created and dropped in milliseconds, unlike a database).
CIDEV_DATABASE = "cidev"
JOB_COLOURS = ("36", "35", "34", "33", "32", "96", "95", "94")
STATE_COLOURS = {"success": "32", "failure": "31", "error": "31", "timed_out": "31",
                 "cancelled": "33", "skipped": "90"}
STEP_MARKS = {"running": ">", "success": "ok", "failure": "FAIL", "timed_out": "TIMEOUT",
              "cancelled": "CANCELLED", "skipped": "skipped"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a workflow locally, end to end",
        description="Validate a workflow, then run it through a standalone orchestrator on "
                    "this machine: same protocol, runner and state machine as production. "
                    "Exit status: 0 every job succeeded, 1 a job did not or the workflow is "
                    "invalid, 2 usage error, 130 interrupted.",
        epilog=NO_ISOLATION)
    parser.add_argument("path", nargs="?", type=Path, default=Path(DEFAULT_PATH), metavar="PATH",
                        help=f"workflow file (default: {DEFAULT_PATH})")
    parser.add_argument("--job", action="append", default=[], metavar="ID",
                        help="run only this job (and the jobs it needs); repeatable")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="where jobs run (only `local`, which has no isolation)")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME",
                        help="give jobs that declare it the secret NAME, from the environment "
                             "variable NAME or, when unset, a prompt without echo; repeatable")
    parser.add_argument("--parallel", type=int, default=max(2, os.cpu_count() or 2),
                        metavar="N", help="jobs running at once per runs_on label "
                                          "(default: CPU count, at least 2)")
    parser.set_defaults(handler=run)


def _git(source: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def working_tree() -> Path:
    """The checkout source: the git work tree around the current directory, else the directory."""
    cwd = Path.cwd()
    top = _git(cwd, "rev-parse", "--show-toplevel")
    return Path(top) if top else cwd


def local_request(path: Path, text: str, source: Path) -> RunRequest:
    """A manual run of the working tree at `source`, described with what git knows of it."""
    commit = _git(source, "rev-parse", "HEAD") or "0" * 40
    branch = _git(source, "symbolic-ref", "--short", "-q", "HEAD")
    try:
        workflow_path = str(path.resolve().relative_to(source))
    except ValueError:
        workflow_path = str(path)
    return RunRequest(
        request_id=f"cidev-{uuid.uuid4()}",
        repo=Repo(forge="local", owner="local", name=source.name, clone_url=f"file://{source}",
                  default_branch=branch or "main"),
        commit_sha=commit, ref=f"refs/heads/{branch}" if branch else "HEAD",
        event=EventKind.MANUAL, branch=branch, workflow_path=workflow_path,
        workflow_source=text)


def read_secrets(names: list[str]) -> dict[str, str]:
    """Each secret from its environment variable, or typed in without echo."""
    values = {}
    for name in names:
        value = os.environ.get(name)
        if value is None:
            if not sys.stdin.isatty():  # no terminal: the value could not be typed unseen
                raise UsageError(f"secret {name} has no value",
                                 hint=f"set the environment variable {name}, or run cidev in "
                                      "a terminal to type it in")
            value = getpass.getpass(f"value of secret {name}: ")
        values[name] = value
    return values


def check_jobs(workflow: Workflow, wanted: list[str]) -> frozenset[str] | None:
    if not wanted:
        return None
    known = [job.id for job in workflow.jobs]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(f"no job {', '.join(repr(u) for u in unknown)} in the workflow",
                         hint=f"jobs: {', '.join(known)}")
    return frozenset(wanted)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _rank(update: Update) -> int:
    """Order within one millisecond: step i starts, prints, then ends; -1 is the job's own."""
    if isinstance(update, StepUpdate):
        return 2 * update.index + (0 if update.state == "running" else 2)
    if isinstance(update, LogUpdate):
        return 2 * update.step_index + 1
    return 1 << 30


class Reorder:
    """Holds updates for `delay_ms` and releases them in the runner's time order.

    A step's last output lines travel in a batch and may arrive after the report that the step
    ended; both carry the runner's timestamps, so a short hold puts them back in order.
    """

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms
        self._heap: list[tuple[int, int, int, Update]] = []
        self._count = 0

    @property
    def pending(self) -> bool:
        return bool(self._heap)

    def push(self, update: Update) -> None:
        ts = getattr(update, "ts_ms", 0) or now_ms()
        self._count += 1
        heapq.heappush(self._heap, (ts, _rank(update), self._count, update))

    def ready(self) -> list[Update]:
        horizon = now_ms() - self.delay_ms
        out = []
        while self._heap and self._heap[0][0] <= horizon:
            out.append(heapq.heappop(self._heap)[-1])
        return out

    def drain(self) -> list[Update]:
        out = [item[-1] for item in sorted(self._heap, key=lambda i: i[:3])]
        self._heap.clear()
        return out


@dataclass
class Printer:
    """Live, per-job prefixed output; colours only on a terminal without NO_COLOR."""

    out: TextIO
    colour: bool
    width: int = 0
    _colours: dict[str, str] = field(default_factory=dict)
    _partial: dict[tuple[str, int], bytes] = field(default_factory=dict)
    _system_lines: dict[str, set[str]] = field(default_factory=dict)

    def paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def prefix(self, key: str) -> str:
        if key not in self._colours:
            self._colours[key] = JOB_COLOURS[len(self._colours) % len(JOB_COLOURS)]
        return self.paint(self._colours[key], f"{key:<{self.width}}") + " |"

    def line(self, key: str, text: str) -> None:
        self.out.write(f"{self.prefix(key)} {text}\n")

    def show(self, update: Update) -> None:
        if isinstance(update, LogUpdate):
            self.log(update)
        elif isinstance(update, StepUpdate):
            self.step(update)
        elif isinstance(update, JobUpdate):
            self.job(update)
        self.out.flush()

    def log(self, update: LogUpdate) -> None:
        stream = (update.key, update.stream)
        data = self._partial.pop(stream, b"") + update.data
        *lines, rest = data.split(b"\n")
        if rest:
            self._partial[stream] = rest
        for raw in lines:
            text = raw.decode(errors="replace")
            if update.stream == runner_pb2.SYSTEM:
                self._system_lines.setdefault(update.key, set()).add(text)
                text = self.paint("2", text)
            elif update.stream == runner_pb2.STDERR:
                text = self.paint("2;31", "!") + " " + text
            self.line(update.key, text)

    def step(self, update: StepUpdate) -> None:
        mark = STEP_MARKS.get(update.state, update.state)
        if update.state == "running":
            self.line(update.key, self.paint("1", f"{mark} {update.name}"))
            return
        took = f" ({update.duration_ms / 1000:.2f}s)" if update.duration_ms is not None else ""
        code = (f", exit {update.exit_code}" if update.exit_code not in (None, 0) else "")
        text = f"{mark} {update.name}{took}{code}"
        self.line(update.key, self.paint(STATE_COLOURS.get(update.state, "0"), text))

    def job(self, update: JobUpdate) -> None:
        if update.state in (JobState.QUEUED, JobState.PROVISIONING, JobState.RUNNING):
            return
        message = f": {update.message}" if update.message else ""
        text = f"job {update.state.value}{message}"
        if text in self._system_lines.get(update.key, ()):
            return  # the runner said it already
        self.line(update.key, self.paint(STATE_COLOURS.get(update.state.value, "0"), text))


def _duration(job: JobSummary) -> str:
    seconds = job.duration_s
    return "-" if seconds is None else f"{seconds:.1f}s"


def summary_table(summary: RunSummary, printer: Printer, elapsed: float) -> str:
    """One row per job: state, duration, steps passed, and why it did not succeed."""
    width = max([len("JOB")] + [len(j.key) for j in summary.jobs])
    rows = [f"{'JOB':<{width}}  {'STATE':<10} {'TIME':>7}  STEPS  DETAIL"]
    for job in summary.jobs:
        passed = sum(s.state == "success" for s in job.steps)
        state = printer.paint(STATE_COLOURS.get(job.state.value, "0"), f"{job.state.value:<10}")
        detail = "" if job.state == JobState.SUCCESS else job.message.splitlines()[0] if job.message else ""
        rows.append(f"{job.key:<{width}}  {state} {_duration(job):>7}  "
                    f"{passed}/{len(job.steps):<4} {detail}".rstrip())
    ok = sum(j.state == JobState.SUCCESS for j in summary.jobs)
    verdict = printer.paint(STATE_COLOURS.get(summary.state, "0"), summary.state)
    rows.append(f"run {verdict}: {ok} of {len(summary.jobs)} jobs succeeded in {elapsed:.1f}s")
    return "\n".join(rows)


async def execute(request: RunRequest, options: RunOptions, *, secrets: dict[str, str],
                  labels: set[str], parallel: int, printer: Printer,
                  state_dir: Path) -> RunSummary:
    """Run `request` on a throw-away standalone orchestrator; its summary."""
    machines = Path(tempfile.mkdtemp(prefix="cidev-machines-", dir=state_dir))
    config = OrchestratorConfig(
        host_name=f"cidev-{uuid.uuid4().hex[:8]}", state_dir=state_dir, database_url=None,
        amqp_url=None, grpc_listen="127.0.0.1:0", backend="local", allow_local_backend=True,
        capacity={label: parallel for label in sorted(labels)}, log_level="warning",
        **private_admin())
    backend = LocalBackend(machines)
    schema = f"run_{uuid.uuid4().hex[:12]}"
    try:
        async with running(config, backend=backend, secrets=secrets,
                           embedded_name=CIDEV_DATABASE, schema=schema) as orchestrator:
            api = orchestrator.api
            with api.watch(kinds=(LogUpdate, StepUpdate, JobUpdate)) as watch:
                run_id = await api.submit(request, options)
                return await _follow(api, run_id, watch, printer)
    finally:
        try:
            machines.rmdir()
        except OSError:
            pass


async def _follow(api: OrchestratorAPI, run_id: uuid.UUID, watch: Watch,
                  printer: Printer) -> RunSummary:
    """Print the run's updates as they come until it ends; Ctrl-C cancels it (a second one
    stops at once, still destroying every job's machine on the way out)."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    reorder = Reorder(REORDER_MS)
    waiter = asyncio.ensure_future(api.wait(run_id))
    getter = asyncio.ensure_future(watch.queue.get())
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        while not waiter.done():
            await asyncio.wait({getter, waiter, stop}, return_when=asyncio.FIRST_COMPLETED,
                               timeout=REORDER_MS / 1000 / 3 if reorder.pending else None)
            while getter.done():
                update = getter.result()
                if update.run_id == run_id:
                    reorder.push(update)
                getter = asyncio.ensure_future(watch.queue.get())
                await asyncio.sleep(0)
            for update in reorder.ready():
                printer.show(update)
            if stop.done():
                loop.remove_signal_handler(signal.SIGINT)
                printer.line("cidev", "interrupted: cancelling the run (Ctrl-C again to stop at once)")
                await api.cancel_run(run_id, "cancelled: interrupted (Ctrl-C)")
                stop = asyncio.ensure_future(asyncio.Event().wait())
        while not watch.queue.empty():
            update = watch.queue.get_nowait()
            if update.run_id == run_id:
                reorder.push(update)
        for update in reorder.drain():
            printer.show(update)
        return waiter.result()
    finally:
        for future in (getter, stop):
            future.cancel()
        loop.remove_signal_handler(signal.SIGINT)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    try:
        workflow = load(path)
    except WorkflowError as exc:
        count = len(exc.diagnostics)
        print(f"{render(exc)}\n{path}: {count} error{'s' if count > 1 else ''}", file=sys.stderr)
        return 1
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    only = check_jobs(workflow, args.job)
    source = working_tree()
    request = local_request(path, read_text(path), source)
    secrets = read_secrets(args.secret)
    planned = expand(workflow)
    labels = {p.runs_on for p in planned}
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    printer = Printer(sys.stdout, colour, width=max(len(p.key) for p in planned))
    state_dir = default_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    print(printer.paint("2", f"cidev: running {path} from {source} (local backend, no "
                             "isolation)"), flush=True)
    started = time.monotonic()
    summary = asyncio.run(execute(request, RunOptions(only_jobs=only, ignore_triggers=True),
                                  secrets=secrets, labels=labels, parallel=args.parallel,
                                  printer=printer, state_dir=state_dir))
    print()
    print(summary_table(summary, printer, time.monotonic() - started))
    if summary.state == "cancelled" and any("interrupted" in j.message for j in summary.jobs):
        return 130
    return 0 if summary.succeeded else 1
