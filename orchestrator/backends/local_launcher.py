"""The runner zygote of the `local` backend (run as `python -m`).

Starting Python and importing the runner (gRPC, protobuf, pydantic) costs a few hundred
milliseconds of CPU per job. This process pays it once: it imports the runner, says it is
ready, then forks one child per job on request. A child starts its own session (so it leads
its own process group), points stdin at /dev/null and stdout/stderr at the job's console file,
enters the workspace with the job's environment, and becomes the runner.

Protocol, one JSON object per line. In on stdin: `{"id": N, "console": PATH, "workspace":
PATH, "env": {...}}`. Out on stdout: `{"ready": true}` once; `{"id": N, "pid": PID}` per
spawn; `{"exit": PID, "status": CODE}` when a child ends (a negative code is the signal that
killed it). EOF on stdin: the zygote exits; its children live on in their own sessions, and
the backend kills each with its job.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import Any

import workflow_runner.main as runner


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _become_runner(request: dict[str, Any], wakeup: tuple[int, int]) -> None:
    """In the forked child: detach, redirect, and run the job. Never returns."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wakeup:
            os.close(fd)
        os.setsid()
        console = os.open(request["console"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(console, 1)
        os.dup2(console, 2)
        os.close(console)
        os.close(devnull)
        os.environ.update(request["env"])
        os.chdir(request["workspace"])
        code = runner.main([])
    except BaseException as exc:  # the child must never fall back into the zygote's loop
        print(f"solstice local launcher: the runner failed to start: {exc!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _emit({"exit": pid, "status": code})


def main() -> int:
    wakeup = os.pipe()
    for fd in wakeup:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wakeup[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _emit({"ready": True})
    stdin = sys.stdin.buffer
    buffered = b""
    while True:
        readable, _, _ = select.select([stdin.fileno(), wakeup[0]], [], [])
        if wakeup[0] in readable:
            while True:
                try:
                    if not os.read(wakeup[0], 512):
                        break
                except BlockingIOError:
                    break
            _reap()
        if stdin.fileno() not in readable:
            continue
        data = os.read(stdin.fileno(), 65536)
        if not data:
            return 0
        buffered += data
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _become_runner(request, wakeup)
            _emit({"id": request["id"], "pid": pid})


if __name__ == "__main__":
    sys.exit(main())
