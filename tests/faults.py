"""Run a service's real entry point with one of its coroutine methods made to fail on demand.

    python -m tests.faults TRIGGER MODULE:Class.method ENTRY_MODULE [ARGS...]

`ENTRY_MODULE.main(ARGS)` runs as the service would (its exit status is the process's). The
method works as usual until the file TRIGGER exists; from then on a call in progress, and any
later one, raises `RuntimeError("injected fault in Class.method")`: what an unforeseen bug in
that task looks like to the service's supervision.
"""
from __future__ import annotations

import asyncio
import functools
import importlib
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

POLL = 0.05


def inject(target: str, trigger: Path) -> None:
    """Replace `module:Class.method` by a version that fails once `trigger` exists."""
    module_name, qualname = target.split(":")
    class_name, method = qualname.split(".")
    owner = getattr(importlib.import_module(module_name), class_name)
    original: Callable[..., Coroutine[Any, Any, Any]] = getattr(owner, method)

    @functools.wraps(original)
    async def faulty(*args: Any, **kwargs: Any) -> Any:
        work = asyncio.ensure_future(original(*args, **kwargs))
        try:
            while not trigger.exists():
                done, _ = await asyncio.wait({work}, timeout=POLL)
                if done:
                    return work.result()
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        raise RuntimeError(f"injected fault in {qualname}")

    setattr(owner, method, faulty)


def main() -> int:
    trigger, target, entry, *args = sys.argv[1:]
    inject(target, Path(trigger))
    return importlib.import_module(entry).main(args)


if __name__ == "__main__":
    sys.exit(main())
