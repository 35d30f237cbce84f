"""Structured log lines carry the trace, run and job ids of the work they belong to, as the
services' handler (`setup_observability`) writes them."""
from __future__ import annotations

import io
import logging
import re

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.observability import ContextFilter, LogfmtFormatter
from tests.orchestrator.conftest import Harness
from tests.tracing import spans  # noqa: F401  (fixture)

WORKFLOW = 'workflow name="w" { job id="build" runs_on="local" { step name="s" run="true" } }'


async def test_job_log_lines_carry_trace_run_and_job_ids(
        harness: Harness, spans: InMemorySpanExporter) -> None:  # noqa: F811
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # setLevel, not `level =`: loggers cache what is enabled
    try:
        summary = await harness.run(WORKFLOW)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    [finished] = [line for line in out.getvalue().splitlines() if 'msg="job finished"' in line]
    fields = dict(re.findall(r"(\w+)=(\"(?:[^\"\\\\]|\\\\.)*\"|\S+)", finished))
    assert fields["run_id"] == str(summary.run_id)
    assert fields["job_id"] == str(summary.jobs[0].job_id)
    [job_span] = [s for s in spans.get_finished_spans() if s.name == "job"]
    assert fields["trace_id"] == f"{job_span.context.trace_id:032x}"
    recorded = [line for line in out.getvalue().splitlines() if 'msg="run recorded"' in line]
    assert recorded and "trace_id=" in recorded[0] and "request_id=" in recorded[0]
