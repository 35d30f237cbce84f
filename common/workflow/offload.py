"""Workflow work that an event loop must not wait for: validation and matrix expansion.

Both are bounded (`Limits`) but can still take a few hundred milliseconds for a large file,
which would freeze every other task of the loop (a runner's heartbeats, `/healthz`, other
webhooks). Validation runs in a worker process: ckdl's C parser holds the GIL for the whole
parse (about 0.1 s per 500 KiB), so a thread would not keep the loop running. The process is
started on first use with `spawn` (forking a process that runs gRPC threads is unsafe) and
serves every later validation; one worker, so concurrent validations queue instead of
competing for the CPU. As with any `spawn`, the main module of the process must be safe to
import (`if __name__ == "__main__":`); every Solstice entry point is.

A small file (`INLINE_CHARS`, which most workflows are) is validated on the loop instead: its
parse takes a fraction of a millisecond, less than the round trip to the worker process, and
the slowest hostile file of that size stalls the loop for tens of milliseconds at most.

Expansion is plain Python, which gives the GIL up every few milliseconds: a thread is enough,
and spares pickling the planned jobs.
"""
from __future__ import annotations

import asyncio
import functools
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from common.workflow.limits import DEFAULT_LIMITS, Limits
from common.workflow.loader import DEFAULT_PATH, load_workflow
from common.workflow.model import Workflow
from common.workflow.plan import PlannedJob, expand

# A typical workflow's size. Its validation takes a fraction of a millisecond; the slowest
# refusal of this size (every job needing an unknown one: a did-you-mean each) about 25 ms.
INLINE_CHARS = 2048

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _worker() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _replace_broken(broken: ProcessPoolExecutor) -> None:
    """Forget a pool whose process died (killed, out of memory), so the next call starts one."""
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False)


async def load_workflow_async(text: str, path: str = DEFAULT_PATH,
                              limits: Limits = DEFAULT_LIMITS) -> Workflow:
    """`load_workflow` in the validation process (a small `text` on the loop): the entry point
    for every caller inside an event loop. Raises `WorkflowError` as `load_workflow` does; a worker process that died is
    replaced once."""
    if len(text) <= INLINE_CHARS:
        return load_workflow(text, path, limits)
    call = functools.partial(load_workflow, text, path, limits)
    loop = asyncio.get_running_loop()
    pool = _worker()
    try:
        return await loop.run_in_executor(pool, call)
    except BrokenProcessPool:
        _replace_broken(pool)
    return await loop.run_in_executor(_worker(), call)


async def expand_async(workflow: Workflow) -> list[PlannedJob]:
    """`expand` in a thread (up to `max_jobs` jobs of up to `max_steps` steps each)."""
    return await asyncio.to_thread(expand, workflow)
