"""One trace per run: the W3C trace context carried across every hop of a run.

- AMQP: each broker's publish puts the current context in the message headers
  (`message_headers`), with the time it was sent; `common.broker.base.run_handler` opens a
  consumer span under it (and a `broker.queue_wait` span for the time the message waited), so
  every consumer (intake, executor, the integrations) works inside the publisher's trace.
- The outbox: the orchestrator stores the `traceparent` of the span that wrote a row, and the
  run's own (`runs.trace_context`); the relay publishes each row inside the run's trace. The
  forge status outbox stores it with the row's payload (`common.forge.outbox`).
- gRPC: `GetJob` hands the runner the job span's `traceparent` (`Job.traceparent`), which the
  runner sends back as `traceparent` metadata on its calls; the Runner service's spans for them
  are children of it.

The propagator is the W3C one, explicitly: the carriers are ours, and the format must not
depend on `OTEL_PROPAGATORS`. The instrumentation packages do not fit these hops: the aio-pika
one would miss the in-process broker of the standalone mode, and the gRPC server one would
start a trace of its own for each `GetJob` (the runner has no context before it) and for
every long-lived log and heartbeat stream.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
# When a message was published (Unix time in nanoseconds), for its queue-wait span.
SENT_AT_HEADER = "x-solstice-sent-at-ns"

_PROPAGATOR = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The `traceparent` of the current span; None outside any (valid) span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT)


def context_from(traceparent: object) -> Context | None:
    """A context whose parent is the span `traceparent` names; None if absent or malformed
    (it may come from any message header or gRPC metadata)."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode(errors="replace")
    if not isinstance(traceparent, str) or not traceparent:
        return None
    context = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) of a `traceparent`."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 else None


def within_run(own: str | None, run: str | None) -> str | None:
    """The parent for something a run caused: `own` (the span that caused it) when it belongs
    to the run's trace, else the run's (an operator's cancel, a reaper: their spans are not
    the run's)."""
    if own and (run is None or trace_id_of(own) == trace_id_of(run)):
        return own
    return run or own


def message_headers(headers: Mapping[str, object] | None = None) -> dict[str, object]:
    """`headers` plus the current trace context and the time of sending."""
    result = dict(headers or {})
    traceparent = current_traceparent()
    if traceparent is not None:
        result[TRACEPARENT] = traceparent
    result[SENT_AT_HEADER] = time.time_ns()
    return result


def metadata_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context | None:
    """The context a gRPC caller sent as `traceparent` metadata, if any."""
    for key, value in metadata or ():
        if key == TRACEPARENT:
            return context_from(value)
    return None
