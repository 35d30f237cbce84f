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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cidev.record import save_record
from cidev.workflow_file import UsageError, load, read_text, render, workflow_path
from common.messages import EventKind, JobState, Repo, RunRequest
from common.text import plural
from common.workflow import DEFAULT_PATH, PlannedJob, WorkflowError, expand
from orchestrator.api import JobSummary, OrchestratorAPI, RunSummary
from orchestrator.backends.local import LocalBackend
from orchestrator.blobstore import BlobStoreConfig
from orchestrator.config import OrchestratorConfig
from orchestrator.db.embedded import default_state_dir
from orchestrator.intake import RunOptions, select_jobs
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
JOB_ENDINGS = frozenset(f"job {state.value}" for state in JobState)
STEP_MARKS = {"running": ">", "success": "ok", "failure": "FAIL", "timed_out": "TIMEOUT",
              "cancelled": "CANCELLED", "skipped": "skipped"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a workflow locally, end to end",
        description="Validate a workflow, then run it through a standalone orchestrator on "
                    "this machine: same protocol, runner and state machine as production. "
                    "Exit status: 0 every job succeeded, 1 a job did not or the workflow is "
                    "invalid, 2 usage error, 128+N stopped by signal N (130 Ctrl-C, 143 "
                    "SIGTERM, 129 SIGHUP).",
        epilog=NO_ISOLATION)
    parser.add_argument("path", nargs="?", type=Path, metavar="PATH",
                        help=f"workflow file or repository directory (default: the {DEFAULT_PATH}"
                             " of the current directory or the nearest one above it)")
    parser.add_argument("--job", action="append", default=[], metavar="ID",
                        help="run only this job (and the jobs it needs); one matrix cell with "
                             "'test[python=3.11,mode=fast]', the cells of one value with "
                             "'test[python=3.11]'; repeatable")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="where jobs run (only `local`, which has no isolation)")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME",
                        help="give jobs that declare it the secret NAME, from the environment "
                             "variable NAME or, when unset, a prompt without echo; repeatable")
    parser.add_argument("--parallel", type=int, default=max(2, os.cpu_count() or 2),
                        metavar="N", help="jobs running at once per runs_on label "
                                          "(default: CPU count, at least 2)")
    parser.add_argument("--record", type=Path, metavar="DIR",
                        help="keep the run's record (manifest.json and every artifact) in DIR "
                             "(default: records/RUN-ID under cidev's state directory)")
    parser.set_defaults(handler=run)


def _git(source: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def working_tree(workflow: Path) -> Path:
    """The checkout source: the git work tree around the current directory, else the directory
    holding the workflow's `.solstice/`, else the current directory."""
    cwd = Path.cwd()
    top = _git(cwd, "rev-parse", "--show-toplevel")
    if top:
        return Path(top)
    if workflow.resolve().parent.name == ".solstice":
        return workflow.resolve().parent.parent
    return cwd


@dataclass(frozen=True)
class Tree:
    """What git knows of the tree a local run copies."""

    commit: str  # "" outside a git repository
    branch: str | None
    dirty: bool

    def describe(self) -> str:
        if not self.commit:
            return "not a git repository"
        changes = " with uncommitted changes" if self.dirty else ""
        return f"commit {self.commit[:12]}{changes}"


def inspect_tree(source: Path) -> Tree:
    commit = _git(source, "rev-parse", "--verify", "-q", "HEAD") or ""
    status = _git(source, "status", "--porcelain") if commit else None
    return Tree(commit=commit, branch=_git(source, "symbolic-ref", "--short", "-q", "HEAD"),
                dirty=bool(status))


def local_request(path: Path, text: str, source: Path, tree: Tree) -> RunRequest:
    """A manual run of the working tree at `source`, described with what git knows of it."""
    commit, branch = tree.commit, tree.branch
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


def _cells(planned: list[PlannedJob], wanted: str) -> list[str]:
    """The keys `wanted` names: `id`, or `id[axis=value,...]` (every cell with those values)."""
    job_id, _, rest = wanted.partition("[")
    job_id = job_id.strip()
    if not rest:
        return [p.key for p in planned if p.job.id == job_id]
    if not rest.endswith("]"):
        return []
    values = {}
    for pair in rest[:-1].split(","):
        axis, equals, value = pair.partition("=")
        if not equals:
            return []
        values[axis.strip()] = value.strip()
    return [p.key for p in planned
            if p.job.id == job_id and all(p.matrix.get(a) == v for a, v in values.items())]


def check_jobs(planned: list[PlannedJob], wanted: list[str]) -> frozenset[str] | None:
    """The planned keys `--job` selects (None: all), or a `UsageError` naming what is not there."""
    if not wanted:
        return None
    chosen = {w: _cells(planned, w) for w in wanted}
    unknown = [w for w, keys in chosen.items() if not keys]
    if unknown:
        raise UsageError(f"no job {', '.join(repr(u) for u in unknown)} in the workflow",
                         hint=f"jobs: {', '.join(p.key for p in planned)}")
    return frozenset(key for keys in chosen.values() for key in keys)


def check_secrets(planned: list[PlannedJob], given: list[str]) -> None:
    """Refuse, before any job starts, a run whose jobs declare a secret not given."""
    missing: dict[str, list[str]] = {}
    for job in planned:
        for name in job.job.secrets:
            if name not in given:
                missing.setdefault(name, []).append(job.key)
    if missing:
        names = sorted(missing)
        listed = ", ".join(f"{n} (needed by {', '.join(missing[n])})" for n in names)
        raise UsageError(f"secret{'s' if len(names) > 1 else ''} {listed} not given",
                         hint="pass " + " ".join(f"--secret {n}" for n in names) + "; each "
                              "value comes from the environment variable of that name, else "
                              "it is typed in")


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
    # Per job, the detail of its end once shown: the runner tells it after the step, again as
    # `job failure: ...`, and the orchestrator's update once more; it is shown once.
    _endings: dict[str, set[str]] = field(default_factory=dict)

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
                if self._told(update.key, text):
                    continue
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
        detail = job_detail(update.state, update.message)
        self._endings.setdefault(update.key, set()).add(detail)
        if detail in self._system_lines.get(update.key, ()):
            detail = ""  # the line just above says why
        text = f"job {update.state.value}{f': {detail}' if detail else ''}"
        self.line(update.key, self.paint(STATE_COLOURS.get(update.state.value, "0"), text))

    def _told(self, key: str, text: str) -> bool:
        """Whether the system line `text` is (or repeats) how the job ended, which `job` shows
        from the orchestrator's update; records the line if not."""
        head, sep, _ = text.partition(": ")
        if (sep and head in JOB_ENDINGS) or text in self._endings.get(key, ()):
            return True
        self._system_lines.setdefault(key, set()).add(text)
        return False


def job_detail(state: JobState, message: str) -> str:
    """A job's message without its state in front ("skipped: needed unit, ..."), which the
    state column or the `job skipped:` prefix already says."""
    return message.removeprefix(f"{state.value}: ")


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
        detail = "" if job.state == JobState.SUCCESS or not job.message else \
            job_detail(job.state, job.message.splitlines()[0])
        rows.append(f"{job.key:<{width}}  {state} {_duration(job):>7}  "
                    f"{passed}/{len(job.steps):<4} {detail}".rstrip())
    ok = sum(j.state == JobState.SUCCESS for j in summary.jobs)
    verdict = printer.paint(STATE_COLOURS.get(summary.state, "0"), summary.state)
    rows.append(f"run {verdict}: {ok} of {plural(len(summary.jobs), 'job')} succeeded in "
                f"{elapsed:.1f}s")
    return "\n".join(rows)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """SIGINT, SIGTERM and SIGHUP while a run goes (Ctrl-C, `timeout`, a closed terminal).

    The first asks to cancel the run: its jobs end `cancelled`, each machine destroyed. The
    second asks to stop at once: the jobs are ended without waiting for their steps, still
    destroying every machine on the way out. Later ones are ignored until that is done. No
    signal interrupts the code where it stands, so nothing is left half torn down.
    """

    def __init__(self) -> None:
        self.first: signal.Signals | None = None
        self.cancel = asyncio.Event()
        self.stop_now = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._received, signum)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    def _received(self, signum: signal.Signals) -> None:
        if self.first is None:
            self.first = signum
            self.cancel.set()
        else:
            self.stop_now.set()

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.first == signal.SIGINT else signal.Signals(self.first).name

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by the first signal."""
        assert self.first is not None
        return 128 + self.first


async def execute(request: RunRequest, options: RunOptions, *, secrets: dict[str, str],
                  labels: set[str], parallel: int, printer: Printer,
                  state_dir: Path, interrupts: Interrupts,
                  record: Path | None = None) -> RunSummary | None:
    """Run `request` on a throw-away standalone orchestrator; its summary, or None when a
    second signal stopped it at once. The stop signals are `interrupts`' while it runs. The
    record of a run that ended is written to `record` (default `records/RUN-ID` under
    `state_dir`)."""
    interrupts.install()
    machines = Path(tempfile.mkdtemp(prefix="cidev-machines-", dir=state_dir))
    # The run's artifacts go with it, like its throw-away schema.
    blobs = Path(tempfile.mkdtemp(prefix="cidev-blobs-", dir=state_dir))
    config = OrchestratorConfig(
        host_name=f"cidev-{uuid.uuid4().hex[:8]}", state_dir=state_dir, database_url=None,
        amqp_url=None, grpc_listen="127.0.0.1:0", backend="local", allow_local_backend=True,
        capacity={label: parallel for label in sorted(labels)}, log_level="warning",
        blob_store=BlobStoreConfig(path=blobs), **private_admin())
    backend = LocalBackend(machines)
    schema = f"run_{uuid.uuid4().hex[:12]}"
    try:
        # Leaving this block stops the orchestrator, which ends the jobs still running and
        # destroys their machines.
        async with running(config, backend=backend, secrets=secrets,
                           embedded_name=CIDEV_DATABASE, schema=schema) as orchestrator:
            api = orchestrator.api
            with api.watch(kinds=(LogUpdate, StepUpdate, JobUpdate)) as watch:
                run_id = await api.submit(request, options)
                summary = await _follow(api, run_id, watch, printer, interrupts)
            if summary is not None and summary.final:
                directory = record or state_dir / "records" / str(run_id)
                files = await save_record(orchestrator, run_id, directory)
                print(printer.paint("2", f"cidev: record of the run (manifest.json, "
                                         f"{plural(files, 'artifact file')}) in {directory}"))
            return summary
    finally:
        shutil.rmtree(blobs, ignore_errors=True)
        try:
            machines.rmdir()
        except OSError:
            pass
        interrupts.remove()


async def _follow(api: OrchestratorAPI, run_id: uuid.UUID, watch: Watch, printer: Printer,
                  interrupts: Interrupts) -> RunSummary | None:
    """Print the run's updates as they come until it ends; a first signal cancels it, a
    second stops following at once (None)."""
    reorder = Reorder(REORDER_MS)
    waiter = asyncio.ensure_future(api.wait(run_id))
    getter = asyncio.ensure_future(watch.queue.get())
    cancel = asyncio.ensure_future(interrupts.cancel.wait())
    stop_now = asyncio.ensure_future(interrupts.stop_now.wait())
    try:
        while not waiter.done():
            await asyncio.wait({getter, waiter, cancel, stop_now},
                               return_when=asyncio.FIRST_COMPLETED,
                               timeout=REORDER_MS / 1000 / 3 if reorder.pending else None)
            while getter.done():
                update = getter.result()
                if update.run_id == run_id:
                    reorder.push(update)
                getter = asyncio.ensure_future(watch.queue.get())
                await asyncio.sleep(0)
            for update in reorder.ready():
                printer.show(update)
            if stop_now.done():
                printer.line("cidev", "stopping now: ending the jobs and destroying their "
                                      "machines")
                return None
            if cancel.done():
                printer.line("cidev", f"interrupted ({interrupts.name}): cancelling the run "
                                      "(Ctrl-C again to stop at once)")
                await api.cancel_run(run_id, f"cancelled: interrupted ({interrupts.name})")
                cancel = asyncio.ensure_future(asyncio.Event().wait())
        while not watch.queue.empty():
            update = watch.queue.get_nowait()
            if update.run_id == run_id:
                reorder.push(update)
        for update in reorder.drain():
            printer.show(update)
        return waiter.result()
    finally:
        for future in (getter, cancel, stop_now, waiter):
            future.cancel()
        await asyncio.gather(getter, cancel, stop_now, waiter, return_exceptions=True)


def run(args: argparse.Namespace) -> int:
    path = workflow_path(args.path)
    try:
        workflow = load(path)
    except WorkflowError as exc:
        print(f"{render(exc)}\n{path}: {plural(len(exc.diagnostics), 'error')}", file=sys.stderr)
        return 1
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    planned = expand(workflow)
    only = check_jobs(planned, args.job)
    selected = select_jobs(planned, only) if only is not None else planned
    check_secrets(selected, args.secret)
    source = working_tree(path)
    tree = inspect_tree(source)
    request = local_request(path, read_text(path), source, tree)
    secrets = read_secrets(args.secret)
    labels = {p.runs_on for p in selected}
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    printer = Printer(sys.stdout, colour, width=max(len(p.key) for p in selected))
    state_dir = default_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    print(printer.paint("2", f"cidev: running {path} from {source}, {tree.describe()} (local "
                             "backend, no isolation)"), flush=True)
    started = time.monotonic()
    interrupts = Interrupts()
    summary = asyncio.run(execute(request, RunOptions(only_jobs=only, ignore_triggers=True),
                                  secrets=secrets, labels=labels, parallel=args.parallel,
                                  printer=printer, state_dir=state_dir, interrupts=interrupts,
                                  record=args.record))
    if summary is not None:
        print()
        print(summary_table(summary, printer, time.monotonic() - started))
    if interrupts.first is not None:
        return interrupts.exit_status
    assert summary is not None
    return 0 if summary.succeeded else 1
