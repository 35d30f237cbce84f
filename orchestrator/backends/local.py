"""The `local` backend: every job's runner is a plain child process on this host.

NO ISOLATION. A job's steps run as the orchestrator's own user, with its network, its file
system and its privileges; the only separation is a per-job copy-on-write copy
(`cp --reflink=auto`) of the source tree as the workspace. It exists for `cidev run` and for
development. An orchestrator refuses it unless `allow_local_backend` is set explicitly.

Each job gets `<root>/<name>/` holding `workspace/` and the runner's console log. The runner
runs in its own session and process group; `destroy` kills that group and any process still
carrying the job's marker in its environment or working inside its directory (steps may start
their own process groups), then removes the directory.

Starting Python and importing gRPC costs ~0.2 s, so the backend keeps a few runner processes
warm (imports done, waiting for their bootstrap on stdin); `start` hands one over.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from orchestrator.backends.base import VM, BackendError, RunnerBootstrap, VMBackend, VMSpec
from orchestrator.backends.commands import run_command

log = logging.getLogger(__name__)

LAUNCHER_MODULE = "orchestrator.backends.local_launcher"
# Not SOLSTICE_*: the runner strips those from the steps' environment, and steps must carry it.
MARKER_ENV = "CI_LOCAL_MACHINE"
CONSOLE_FILE = "console.log"
WORKSPACE_DIR = "workspace"
# The runner gets the host's basics, never the orchestrator's own settings or credentials.
ENV_PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE",
                   "TZ", "TMPDIR", "TERM")
_COPY_BATCH = 1000
COPY_TIMEOUT = 600.0


def runner_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ENV_PASSTHROUGH}


async def copy_tree(source: Path, target: Path, *, timeout: float = COPY_TIMEOUT) -> None:
    """Copy `source` into the new directory `target`, copy-on-write where the FS allows.

    A git work tree contributes its `.git` and the files git sees (tracked, plus untracked
    ones not ignored), so uncommitted edits come along but build outputs and virtualenvs do not.
    """
    target.mkdir(parents=True)
    if not (source / ".git").exists():
        await run_command(["cp", "-a", "--reflink=auto", f"{source}/.", str(target)],
                          timeout=timeout)
        return
    listing = await run_command(["git", "-C", str(source), "ls-files", "-z", "--cached",
                                 "--others", "--exclude-standard"], timeout=timeout)
    files = [f for f in listing.stdout.split("\0") if f and (source / f).exists()]
    await run_command(["cp", "-a", "--reflink=auto", str(source / ".git"), str(target)],
                      timeout=timeout)
    for i in range(0, len(files), _COPY_BATCH):
        await run_command(["cp", "-a", "--reflink=auto", "--parents", "-t", str(target), "--",
                           *files[i:i + _COPY_BATCH]], cwd=source, timeout=timeout)


class _WarmRunner:
    """A launcher process that finished its imports and waits for a bootstrap line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, python: str, cwd: Path) -> "_WarmRunner":
        proc = await asyncio.create_subprocess_exec(
            python, "-m", LAUNCHER_MODULE, cwd=cwd, env=runner_environment(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        ready = await proc.stdout.readline()
        if ready.strip() != b"ready":
            err = await proc.stderr.read()
            await proc.wait()
            raise BackendError(f"the runner failed to start: {err.decode(errors='replace').strip()}",
                               hint="is workflow_runner installed in this Python environment?")
        return cls(proc)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalBackend(VMBackend):
    """Jobs as child processes in copied workspaces under `root`. NO ISOLATION (see module)."""

    name = "local"

    def __init__(self, root: Path, *, warm: int = 2, python: str = sys.executable) -> None:
        self.root = root
        self.python = python
        self.warm = warm
        self._pool: asyncio.Queue[asyncio.Task[_WarmRunner]] = asyncio.Queue()
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._closed = False

    async def prepare(self) -> None:
        """Start the warm runners now, so the first job does not wait for Python to start."""
        self.root.mkdir(parents=True, exist_ok=True)
        while self._pool.qsize() < self.warm:
            self._refill()

    def _refill(self) -> None:
        if not self._closed:
            self._pool.put_nowait(asyncio.create_task(_WarmRunner.spawn(self.python, self.root)))

    async def _take_runner(self) -> _WarmRunner:
        if self._pool.empty():
            self._refill()
        task = self._pool.get_nowait()
        while self._pool.qsize() < self.warm:
            self._refill()
        runner = await task
        if runner.proc.returncode is not None:
            raise BackendError("a warm runner process died before it was used")
        return runner

    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise BackendError(f"invalid machine name {name!r}")
        return self.root / name

    async def provision(self, spec: VMSpec) -> VM:
        directory = self._dir(spec.name)
        self.root.mkdir(parents=True, exist_ok=True)
        if directory.exists():
            raise BackendError(f"{directory} already exists",
                               hint="a leftover of an earlier attempt; the reaper removes it")
        workspace = directory / WORKSPACE_DIR
        directory.mkdir()
        if spec.source_dir is not None:
            await copy_tree(spec.source_dir, workspace)
        else:
            workspace.mkdir()
        return VM(name=spec.name, backend=self.name, spec=spec,
                  details={"dir": str(directory), "workspace": str(workspace)})

    async def start(self, vm: VM, bootstrap: RunnerBootstrap) -> None:
        runner = await self._take_runner()
        directory = self._dir(vm.name)
        line = json.dumps({
            "console": str(directory / CONSOLE_FILE),
            "workspace": vm.details["workspace"],
            "env": {
                MARKER_ENV: vm.name,
                "SOLSTICE_ORCHESTRATOR_URL": bootstrap.orchestrator_url,
                "SOLSTICE_JOB_ID": bootstrap.job_id,
                "SOLSTICE_TOKEN": bootstrap.token,
                "SOLSTICE_WORKSPACE": vm.details["workspace"],
            },
        }) + "\n"
        assert runner.proc.stdin is not None
        try:
            runner.proc.stdin.write(line.encode())
            await runner.proc.stdin.drain()
            runner.proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError) as exc:
            runner.kill()
            raise BackendError(f"the runner process went away before its start: {exc}") from exc
        (directory / "runner.pid").write_text(str(runner.proc.pid))
        self._procs[vm.name] = runner.proc
        vm.details["pid"] = str(runner.proc.pid)

    async def wait_exit(self, vm: VM) -> str:
        proc = self._procs.get(vm.name)
        if proc is None:
            await asyncio.Event().wait()
        code = await proc.wait()
        return f"the runner process exited with status {code}"

    async def stop(self, vm: VM) -> None:
        proc = self._procs.get(vm.name)
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 5)
        except ProcessLookupError:
            pass
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def destroy(self, vm: VM) -> None:
        proc = self._procs.pop(vm.name, None)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
        await self.destroy_by_name(vm.name)

    async def leftovers(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith(prefix))

    async def destroy_by_name(self, name: str) -> None:
        directory = self._dir(name)
        await asyncio.to_thread(_kill_job_processes, name, directory)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        if directory.exists():
            raise BackendError(f"could not remove {directory}")

    async def console_log(self, vm: VM) -> str:
        path = self._dir(vm.name) / CONSOLE_FILE
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def close(self) -> None:
        """Kill the warm runners (jobs' runners are destroyed by their jobs)."""
        self._closed = True
        while not self._pool.empty():
            task = self._pool.get_nowait()
            try:
                runner = await task
            except BackendError:
                continue
            runner.kill()
            await runner.proc.wait()


def _kill_job_processes(name: str, directory: Path) -> None:
    """SIGKILL every process of this job: its runner's group, and whatever escaped it."""
    inside = str(directory) + os.sep
    victims = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            cwd = proc.cwd()
            if (cwd.startswith(inside) or cwd == str(directory)
                    or proc.environ().get(MARKER_ENV) == name):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=5)

