"""Every field of every request the gRPC services take, checked at the edge.

A runner's messages come from inside a job's machine, where the job's own steps can read the
runner's token: they are hostile input. Each message is checked here against what the protocol
(`protos/runner.proto`, `protos/admin.proto`) and the database columns allow (bigint, integer
and smallint ranges, the enums, string lengths, NUL bytes and UTF-8, relative paths) before a
handler touches it. A violation raises `InvalidMessage`; `require` turns it into
INVALID_ARGUMENT with the message, so nothing out of range reaches the log writer or a query
(where it would end as an `OverflowError`, UNKNOWN and a traceback).

Checks that need the session (the job the token belongs to, how many steps it has) stay in the
handlers; these know only the message.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from common.artifact_paths import ArtifactPathError, check_artifact_path
from common.errors import SolsticeError
from common.masking import MAX_ADDED_MASK_BYTES, MAX_ADDED_MASKS
from orchestrator.api import RUN_STATES
from protos import admin_pb2, runner_pb2

M = TypeVar("M", bound=Message)

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1  # Postgres bigint: log seq, durations, sizes
# The last millisecond of year 9999: Python's datetime ends there (Postgres goes further).
MAX_TIMESTAMP_MS = 253_402_300_799_999
MAX_TOKEN_CHARS = 512
MAX_MESSAGE_CHARS = 64 * 1024
# step_index of lines that belong to no step (checkout, setup, the result).
NO_STEP = -1
LOG_STREAMS = frozenset({runner_pb2.STDOUT, runner_pb2.STDERR, runner_pb2.SYSTEM})
STEP_STATES = frozenset(runner_pb2.StepState.values()) - {runner_pb2.STEP_STATE_UNSPECIFIED}
# JOB_OUTCOME_UNSPECIFIED is allowed: the handler records it as `error` ("no outcome").
JOB_OUTCOMES = frozenset(runner_pb2.JobOutcome.values())
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Admin ids: a full UUID or a prefix of one; hex and dashes only (no LIKE wildcards).
ID_PREFIX = re.compile(r"^[0-9a-f-]{4,36}$")
MAX_LIST_LIMIT = 1000


class InvalidMessage(SolsticeError):
    """A request field outside what the protocol and the database allow."""


def _fail(field: str, problem: str) -> NoReturn:
    raise InvalidMessage(f"{field}: {problem}")


def _int(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        _fail(field, f"{value} is outside {low}..{high}")


def _text(field: str, value: str, max_chars: int, *, required: bool = False) -> None:
    if required and not value:
        _fail(field, "must not be empty")
    if len(value) > max_chars:
        _fail(field, f"{len(value)} characters, at most {max_chars} allowed")
    if "\x00" in value:
        _fail(field, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(field, "is not valid UTF-8")


def _job_id(field: str, value: str, *, required: bool = True) -> None:
    if not value and not required:
        return
    try:
        canonical = str(uuid.UUID(value)) if len(value) == 36 else ""
    except ValueError:
        canonical = ""
    if canonical != value:
        _fail(field, "is not a job id (a UUID in its canonical form)")


def _timestamp(field: str, value: int) -> None:
    _int(field, value, 0, MAX_TIMESTAMP_MS)


def _enum(field: str, value: int, allowed: frozenset[int]) -> None:
    if value not in allowed:
        _fail(field, f"{value} is not one of {sorted(allowed)}")


# -- Runner service ---------------------------------------------------------------------------

def get_job_request(message: runner_pb2.GetJobRequest) -> None:
    _job_id("job_id", message.job_id)
    _text("token", message.token, MAX_TOKEN_CHARS, required=True)


def log_chunk(message: runner_pb2.LogChunk) -> None:
    _job_id("job_id", message.job_id)
    _int("step_index", message.step_index, NO_STEP, INT32_MAX)
    _int("seq", message.seq, 1, INT64_MAX)
    _enum("stream", message.stream, LOG_STREAMS)
    _timestamp("timestamp_unix_ms", message.timestamp_unix_ms)
    if len(message.added_masks) > MAX_ADDED_MASKS or any(
            len(value) > MAX_ADDED_MASK_BYTES for value in message.added_masks):
        _fail("added_masks", f"at most {MAX_ADDED_MASKS} values of at most "
                             f"{MAX_ADDED_MASK_BYTES} bytes each")


def step_report(message: runner_pb2.StepReport) -> None:
    _job_id("job_id", message.job_id, required=False)
    _int("step_index", message.step_index, 0, INT32_MAX)
    _enum("state", message.state, STEP_STATES)
    _int("duration_ms", message.duration_ms, 0, INT64_MAX)
    _timestamp("timestamp_unix_ms", message.timestamp_unix_ms)


def job_result(message: runner_pb2.JobResult) -> None:
    _job_id("job_id", message.job_id, required=False)
    _enum("outcome", message.outcome, JOB_OUTCOMES)
    _text("message", message.message, MAX_MESSAGE_CHARS)
    _int("last_log_seq", message.last_log_seq, 0, INT64_MAX)


def heartbeat_ping(message: runner_pb2.HeartbeatPing) -> None:
    _job_id("job_id", message.job_id, required=False)
    _int("current_step", message.current_step, NO_STEP, INT32_MAX)


def artifact_path(path: str) -> None:
    """A file's path as uploaded: the one rule the runner applies too (`common.artifact_paths`)."""
    try:
        check_artifact_path(path)
    except ArtifactPathError as exc:
        _fail("path", exc.message)


def artifact_chunk(message: runner_pb2.ArtifactChunk, *, first: bool) -> None:
    """One chunk of an upload; `first` when it starts a file (and so must name it)."""
    _job_id("job_id", message.job_id)
    if first:
        artifact_path(message.path)
    elif message.path:
        _fail("path", "only the first chunk of a file carries its path")
    if message.sha256 or message.last:
        if not SHA256_HEX.match(message.sha256):
            _fail("sha256", "the last chunk of a file carries its sha256 as 64 lowercase hex "
                            "digits, the others none")
        if not message.last:
            _fail("sha256", "only the last chunk of a file carries it")
    _int("size", message.size, 0, INT64_MAX)


# -- Admin service ----------------------------------------------------------------------------

def id_prefix(field: str, value: str) -> str:
    """A run or job id as an operator types it (full or a prefix of 4+), normalised."""
    ref = value.strip().lower()
    if not ID_PREFIX.match(ref):
        _fail(field, "give at least 4 characters of the id (hex digits and dashes, at most 36)")
    return ref


def list_runs_request(message: admin_pb2.ListRunsRequest) -> None:
    _int("limit", message.limit, 0, MAX_LIST_LIMIT)
    if message.state and message.state not in RUN_STATES:
        _fail("state", f"no run state {message.state!r}; the states are {', '.join(RUN_STATES)}")


def list_audit_request(message: admin_pb2.ListAuditRequest) -> None:
    _int("limit", message.limit, 0, MAX_LIST_LIMIT)


def list_inbox_request(message: admin_pb2.ListInboxRequest) -> None:
    _int("limit", message.limit, 0, MAX_LIST_LIMIT)


def retry_inbox_request(message: admin_pb2.RetryInboxRequest) -> None:
    _text("forge", message.forge, 32, required=True)
    _int("id", message.id, 1, INT64_MAX)


def list_artifacts_request(message: admin_pb2.ListArtifactsRequest) -> None:
    _text("job", message.job, MAX_MESSAGE_CHARS)


def read_artifact_request(message: admin_pb2.ReadArtifactRequest) -> None:
    _job_id("job_id", message.job_id)
    artifact_path(message.path)
    _int("attempt", message.attempt, 0, INT32_MAX)
    _int("offset", message.offset, 0, INT64_MAX)


# -- The edge ---------------------------------------------------------------------------------

async def require(context: grpc.aio.ServicerContext, check: Callable[..., Any],
                  message: M, **options: Any) -> None:
    """Run `check` on `message`; abort the call with INVALID_ARGUMENT if it fails."""
    try:
        check(message, **options)
    except InvalidMessage as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
