"""The `local` backend: every job's runner is a plain child process on this host.

NO ISOLATION. A job's steps run as the orchestrator's own user, with its network, its file
system and its privileges; the only separation is a per-job copy-on-write copy
(`cp --reflink=auto`) of the source tree as the workspace. It exists for `cidev run` and for
development. An orchestrator refuses it unless `allow_local_backend` is set explicitly.

Each job gets `<root>/<name>/` holding `workspace/` and the runner's console log. The runner
runs in its own session and process group; `destroy` kills that group and any process still
carrying the job's marker in its environment or working inside its directory (steps may start
their own process groups), then removes the directory.

Starting Python and importing the runner costs a few hundred milliseconds of CPU, so runners
are forked from a launcher process that imported it once (`local_launcher`); a runner is then
the launcher's child rather than ours, and the launcher reports when it exits.
"""
from __future__ import annotations

import asyncio
import itertools
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
SPAWN_TIMEOUT = 30.0


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


class _Zygote:
    """The launcher process (see `local_launcher`): forks a runner per job, reports exits."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        self._spawned: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reader = asyncio.create_task(self._read(), name="local-zygote")

    @classmethod
    async def start(cls, python: str, cwd: Path) -> _Zygote:
        proc = await asyncio.create_subprocess_exec(
            python, "-m", LAUNCHER_MODULE, cwd=cwd, env=runner_environment(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, limit=1 << 20)
        assert proc.stdout is not None and proc.stderr is not None
        ready = await proc.stdout.readline()
        if not ready.startswith(b'{"ready"'):
            err = await proc.stderr.read()
            await proc.wait()
            raise BackendError(f"the runner launcher failed to start: "
                               f"{err.decode(errors='replace').strip()}",
                               hint="is workflow_runner installed in this Python environment?")
        return cls(proc)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self._reader.done()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "pid" in message:
                self._exits[message["pid"]] = asyncio.get_running_loop().create_future()
                future = self._spawned.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message["pid"])
            elif "exit" in message:
                exited = self._exits.get(message["exit"])
                if exited is not None and not exited.done():
                    exited.set_result(message["status"])
        # The zygote is gone: nobody will report on its children any more.
        for future in self._spawned.values():
            if not future.done():
                future.set_exception(BackendError("the runner launcher exited"))

    async def spawn(self, request: dict[str, object]) -> int:
        """Fork a runner for `request`; its pid (also its process group id)."""
        assert self.proc.stdin is not None
        ident = next(self._ids)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawned[ident] = future
        try:
            self.proc.stdin.write(json.dumps({"id": ident, **request}).encode() + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise BackendError(f"the runner launcher went away: {exc}") from exc
        return await asyncio.wait_for(future, SPAWN_TIMEOUT)

    async def wait(self, pid: int) -> int | None:
        """The exit status of runner `pid`; None if the zygote died before telling."""
        future = self._exits.get(pid)
        if future is None:
            return None
        done, _ = await asyncio.wait({future, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        return future.result() if future in done else None

    def exited(self, pid: int) -> bool:
        future = self._exits.get(pid)
        return future is None or future.done()

    def forget(self, pid: int) -> None:
        self._exits.pop(pid, None)

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)


class LocalBackend(VMBackend):
    """Jobs as child processes in copied workspaces under `root`. NO ISOLATION (see module)."""

    name = "local"

    def __init__(self, root: Path, *, python: str = sys.executable) -> None:
        self.root = root
        self.python = python
        self._zygote: _Zygote | None = None
        self._starting = asyncio.Lock()
        self._pids: dict[str, int] = {}

    async def prepare(self) -> None:
        """Start the launcher now, so the first job does not wait for Python to start."""
        self.root.mkdir(parents=True, exist_ok=True)
        await self._launcher()

    async def _launcher(self) -> _Zygote:
        async with self._starting:
            if self._zygote is None or not self._zygote.alive:
                self.root.mkdir(parents=True, exist_ok=True)
                self._zygote = await _Zygote.start(self.python, self.root)
            return self._zygote

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
        directory = self._dir(vm.name)
        zygote = await self._launcher()
        pid = await zygote.spawn({
            "console": str(directory / CONSOLE_FILE),
            "workspace": vm.details["workspace"],
            "env": {
                MARKER_ENV: vm.name,
                "SOLSTICE_ORCHESTRATOR_URL": bootstrap.orchestrator_url,
                "SOLSTICE_JOB_ID": bootstrap.job_id,
                "SOLSTICE_TOKEN": bootstrap.token,
                "SOLSTICE_WORKSPACE": vm.details["workspace"],
            },
        })
        (directory / "runner.pid").write_text(str(pid))
        self._pids[vm.name] = pid
        vm.details["pid"] = str(pid)

    async def wait_exit(self, vm: VM) -> str:
        pid = self._pids.get(vm.name)
        zygote = self._zygote
        if pid is None or zygote is None:
            await asyncio.Event().wait()
        status = await zygote.wait(pid)
        if status is None:
            await asyncio.Event().wait()  # unknown now: the heartbeat timeout decides
        if status < 0:
            return f"the runner process was killed by signal {-status}"
        return f"the runner process exited with status {status}"

    async def stop(self, vm: VM) -> None:
        pid = self._pids.get(vm.name)
        if pid is None or self._zygote is None:
            return
        if not _signal_group(pid, signal.SIGTERM):
            return
        try:
            await asyncio.wait_for(self._zygote.wait(pid), 5)
        except TimeoutError:
            _signal_group(pid, signal.SIGKILL)

    async def destroy(self, vm: VM) -> None:
        pid = self._pids.pop(vm.name, None)
        if pid is not None and self._zygote is not None:
            # Once the runner was reaped its pid may be reused: then only the scan below,
            # which looks for the job's own marks, may kill what it left behind.
            if not self._zygote.exited(pid):
                _signal_group(pid, signal.SIGKILL)
            self._zygote.forget(pid)
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
        """Stop the launcher (jobs' runners are destroyed by their jobs)."""
        if self._zygote is not None:
            await self._zygote.close()
            self._zygote = None


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


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

