"""The one logging and tracing setup.

Services log structured lines (logfmt: `ts=... level=info logger=... msg="..." key=value`) to
stderr, each with the current span's `trace_id` and `span_id` and the `run_id` / `job_id` of
the work it belongs to (`log_context`), and emit OpenTelemetry spans: to the console exporter
by default, to OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. CLIs pass
`console_spans=False` so spans do not drown their output (set `SOLSTICE_TRACE_CONSOLE=1` to
see them anyway). `common.tracing` carries a run's trace across services.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_configured = False


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


_LOG_CONTEXT: ContextVar[Mapping[str, str] | None] = ContextVar("solstice_log_context",
                                                               default=None)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Every record logged inside (in this task, and tasks it starts) carries `fields`, e.g.
    the run and job ids; a record's own `extra` fields win."""
    token = _LOG_CONTEXT.set({**(_LOG_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _LOG_CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    """Adds, at the moment of logging, the current span's `trace_id` and `span_id` and the
    `log_context` fields to each record (a handler formats it later, maybe elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.__dict__.setdefault("trace_id", f"{span.trace_id:032x}")
            record.__dict__.setdefault("span_id", f"{span.span_id:016x}")
        for key, value in (_LOG_CONTEXT.get() or {}).items():
            record.__dict__.setdefault(key, value)
        return True


class LogfmtFormatter(logging.Formatter):
    """One line per record; `extra={...}` fields (and those of `ContextFilter`) become
    `key=value` pairs."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f"msg={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in record.__dict__.items() if k not in _RESERVED]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_observability(service: str, *, level: str = "info", console_spans: bool = True) -> None:
    """Configure logging and the OpenTelemetry SDK once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif console_spans or os.environ.get("SOLSTICE_TRACE_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)


@functools.cache
def tracer(name: str) -> trace.Tracer:
    """The tracer for a module; spans are no-ops until `setup_observability` ran. Cached:
    `get_tracer` builds a new tracer each call, and a webhook starts several spans."""
    return trace.get_tracer(name)
