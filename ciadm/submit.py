"""`ciadm submit`: run a workflow at a commit, in either mode (standalone included), and
optionally follow it to its end.

REPO is a local directory or a clone URL. The workflow text is read here and sent with the
request (the orchestrator fetches no repository): `--workflow-file FILE`, else from a local
git repository at the commit (`git show COMMIT:PATH`), else from a plain local directory's
file. See `orchestrator/submit.py` for what the orchestrator does with it. A local directory
is a `file://` repository of the forge `local`: the local backend copies its tree as it is (as
`cidev run` does), other backends check the commit out.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from ciadm.client import AddCommand, Client
from ciadm.output import emit, wants_json
from ciadm.runs import print_run
from common.errors import SolsticeError
from protos import admin_pb2

DEFAULT_WORKFLOW = ".solstice/workflow.kdl"
FINAL_RUN_STATES = frozenset({"success", "failure", "error", "cancelled", "skipped"})
POLL_SECONDS = 0.5
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SubmitError(SolsticeError):
    """The repository, commit or workflow given to `ciadm submit` cannot be used."""


def _is_url(repo: str) -> bool:
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None


def _name(text: str, fallback: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.")[:100] or fallback


def _git(directory: Path, *args: str) -> str | None:
    """`git -C directory args` output, None when it fails (not a repository, unknown commit)."""
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def build_request(args: argparse.Namespace) -> admin_pb2.SubmitRunRequest:
    """The SubmitRun request for the command line; `SubmitError` saying what is missing."""
    workflow_path = args.workflow or DEFAULT_WORKFLOW
    commit = args.commit
    source: str | None = None
    if args.workflow_file:
        try:
            source = Path(args.workflow_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SubmitError(f"cannot read --workflow-file {args.workflow_file}: {exc}") from exc
    if _is_url(args.repo):
        clone_url = args.repo
        parts = [p for p in urlparse(args.repo if "://" in args.repo else "ssh://" + args.repo
                                     .replace(":", "/", 1)).path.split("/") if p]
        owner = _name(parts[-2], "remote") if len(parts) > 1 else "remote"
        name = _name((parts or ["repo"])[-1].removesuffix(".git"), "repo")
        if source is None:
            raise SubmitError(f"{args.repo} is not a local directory: ciadm cannot read its "
                              "workflow", hint="pass --workflow-file FILE (the workflow at that "
                                               "commit), or submit a local clone's path")
    else:
        directory = Path(args.repo).expanduser().resolve()
        if not directory.is_dir():
            raise SubmitError(f"{args.repo} is neither a directory nor a clone URL")
        clone_url, owner, name = f"file://{directory}", "local", _name(directory.name, "repo")
        if _git(directory, "rev-parse", "--git-dir") is not None:
            full = _git(directory, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
            if full is None:
                raise SubmitError(f"no commit {commit} in {directory}")
            commit = full.strip()
            if source is None:
                source = _git(directory, "show", f"{commit}:{workflow_path}")
                if source is None:
                    raise SubmitError(f"no {workflow_path} at commit {commit[:12]} in {directory}",
                                      hint="commit the workflow, or pass --workflow-file FILE")
        elif source is None:
            try:
                source = (directory / workflow_path).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise SubmitError(f"cannot read {directory / workflow_path}: {exc}",
                                  hint="pass --workflow PATH or --workflow-file FILE") from exc
    ref = args.ref if args.ref.startswith("refs/") else f"refs/heads/{args.ref}"
    return admin_pb2.SubmitRunRequest(
        clone_url=clone_url, owner=owner, name=name, commit_sha=commit, ref=ref,
        workflow_path=workflow_path, workflow_source=source, request_id=args.request_id or "")


def job_lines(run: admin_pb2.Run) -> list[str]:
    """The run's state and one line per job: what `--wait` shows and redraws."""
    lines = [f"run {run.run_id}  {run.state}  {run.message}".rstrip()]
    for job in run.jobs:
        took = f"{job.duration_s:.1f}s" if job.duration_s >= 0 else ""
        lines.append(f"  {job.key:<32} {job.state:<18} {took:>8}  {job.message}".rstrip())
    return lines


async def follow(client: Client, run: admin_pb2.Run, *, redraw: bool,
                 show: bool = True) -> admin_pb2.Run:
    """Poll the run until it ended, showing its jobs: redrawn in place on a terminal, else a
    plain line whenever the run or a job changes state."""
    drawn = 0
    seen: dict[str, str] = {}
    while True:
        if show and redraw:
            lines = job_lines(run)
            if drawn:
                sys.stdout.write(f"\x1b[{drawn}F\x1b[J")  # back to the first line, clear below
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            drawn = len(lines)
        elif show:
            for key, state in [("run", run.state), *((j.key, j.state) for j in run.jobs)]:
                if seen.get(key) != state:
                    seen[key] = state
                    print(f"{time.strftime('%H:%M:%S')} {key}: {state}", flush=True)
        if run.state in FINAL_RUN_STATES:
            return run
        await asyncio.sleep(POLL_SECONDS)
        run = await client.stub.GetRun(admin_pb2.RunRef(run_id=run.run_id),
                                       metadata=client.metadata)


async def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    run = await client.stub.SubmitRun(build_request(args), metadata=client.metadata)
    as_json = wants_json(args)
    if not as_json:
        print(f"submitted: run {run.run_id}")
        if run.page_url:
            print(f"  {run.page_url}")
    if not args.wait:
        emit(args, run, lambda: print_run(run))
        return 0
    run = await follow(client, run, redraw=sys.stdout.isatty(), show=not as_json)
    emit(args, run, lambda: print(f"run {run.run_id} ended {run.state}: {run.message}"))
    return 0 if run.state == "success" else 1


def register(add: AddCommand) -> None:
    submit = add("submit", cmd_submit, "run the workflow of a repository at a commit (exit "
                 "status with --wait: 0 if the run succeeded, else 1)")
    submit.add_argument("repo", metavar="REPO", help="a local directory (a git clone or a plain "
                        "tree; the local backend copies it as it is, like cidev run, other "
                        "backends check the commit out) or a clone URL")
    submit.add_argument("--commit", required=True, metavar="SHA",
                        help="the commit to run (of a local clone: any name git knows)")
    submit.add_argument("--ref", default="refs/heads/main", metavar="REF",
                        help="the branch (or refs/tags/TAG) the run is for; default main")
    submit.add_argument("--workflow", metavar="PATH",
                        help=f"the workflow file in the repository (default {DEFAULT_WORKFLOW})")
    submit.add_argument("--workflow-file", metavar="FILE",
                        help="read the workflow from this local file instead (needed for a "
                             "clone URL)")
    submit.add_argument("--request-id", metavar="ID",
                        help="idempotency key: submitting it again answers the same run")
    submit.add_argument("--wait", action="store_true",
                        help="follow the run to its end, showing each job's state")
