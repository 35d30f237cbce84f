"""A warm runner process for the `local` backend (run as `python -m`).

It imports the runner first (the slow part), says `ready`, then waits for one JSON line on
stdin: the console file to write to, the workspace and the runner's environment. Then it
becomes the runner.
"""
from __future__ import annotations

import json
import os
import sys

import workflow_runner.main as runner


def main() -> int:
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        return 0  # the pool was closed before this process got a job
    bootstrap = json.loads(line)
    console = os.open(bootstrap["console"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(console, 1)
    os.dup2(console, 2)
    os.close(console)
    os.close(devnull)
    os.environ.update(bootstrap["env"])
    os.chdir(bootstrap["workspace"])
    sys.argv = ["solstice-runner"]
    return runner.main()


if __name__ == "__main__":
    sys.exit(main())
