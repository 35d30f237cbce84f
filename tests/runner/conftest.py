from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from protos import runner_pb2
from tests.runner.double import Harness, RecordingRunner


@pytest.fixture
async def serve() -> AsyncIterator[Callable]:
    """`await serve(job)` -> a started Harness serving `job`; stopped after the test."""
    harnesses: list[Harness] = []

    async def start(job: runner_pb2.Job, **kwargs) -> Harness:
        harness = Harness(RecordingRunner(job, **kwargs))
        await harness.start()
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        await harness.stop()
