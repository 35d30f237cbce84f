"""The trace-context helpers every hop uses (`common/tracing.py`)."""
from __future__ import annotations

from opentelemetry import trace

from common.tracing import context_from, metadata_context, within_run

RUN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SAME_TRACE = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
OTHER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_run_s_messages_stay_in_its_trace() -> None:
    assert within_run(SAME_TRACE, RUN) == SAME_TRACE  # the span that caused it, in the run
    assert within_run(OTHER_TRACE, RUN) == RUN  # an operator's or a reaper's span: the run's
    assert within_run(None, RUN) == RUN
    assert within_run(SAME_TRACE, None) == SAME_TRACE  # a run recorded before traces were kept
    assert within_run(None, None) is None


def test_only_a_valid_traceparent_gives_a_parent() -> None:
    parent = trace.get_current_span(context_from(RUN)).get_span_context()
    assert f"{parent.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    for junk in (None, "", "garbage", 17, b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01"):
        assert context_from(junk) is None
    assert context_from(RUN.encode()) is not None
    assert metadata_context([("authorization", "Bearer x"), ("traceparent", RUN)]) is not None
    assert metadata_context([("authorization", "Bearer x")]) is None
