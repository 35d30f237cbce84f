"""Every message that crosses RabbitMQ (or the in-process queue), defined once.

Messages are versioned JSON. `decode` refuses an unknown `schema_version` or a malformed body
with `MessageError`, which consumers turn into a dead-letter with the reason in a header.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.errors import SolsticeError

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class MessageError(SolsticeError):
    """A message body that cannot be processed (malformed, wrong type, unknown version)."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    schema_version: Literal[1] = SCHEMA_VERSION


class EventKind(StrEnum):
    PUSH = "push"
    PULL_REQUEST = "pull_request"
    TAG = "tag"
    MANUAL = "manual"


class Repo(BaseModel):
    """Where the code lives, as the forge names it."""

    model_config = ConfigDict(frozen=True)
    forge: Literal["forgejo", "gitea", "github", "local"]
    owner: str
    name: str
    clone_url: str
    default_branch: str = "main"
    api_url: str = ""  # base of the forge's API, for status reporting
    installation_id: int | None = None  # GitHub App installation

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


class RerunOf(BaseModel):
    """Run one job of an earlier run again (GitHub's "Re-run" on the job's check run).

    The orchestrator takes the workflow, trust and approval state from run `run_id`. The
    integration cannot see them (a check run does not say whether its code came from a fork),
    so it sends the request untrusted with the default branch's workflow: a consumer unaware
    of this field runs nothing with more trust than a fork's pull request would get.
    """

    model_config = ConfigDict(frozen=True)
    run_id: uuid.UUID
    job_key: str


class RunRequest(_Message):
    """A forge event (or a manual trigger) asking for one workflow run at one commit."""

    type: Literal["run_request"] = "run_request"
    request_id: str  # idempotency key: the forge's delivery id, or a UUID
    repo: Repo
    commit_sha: str
    ref: str  # refs/heads/main, refs/tags/v1, refs/pull/7/head
    event: EventKind
    branch: str | None = None
    tag: str | None = None
    pull_request: int | None = None
    base_branch: str | None = None
    sender: str | None = None  # the forge login whose push, pull request or comment it is
    workflow_path: str = ".solstice/workflow.kdl"
    workflow_source: str  # the KDL text, fetched by the integration at the right commit
    trusted: bool = True  # False for forks / authors without write access: no secrets
    needs_approval: bool = False
    priority: int = 0  # higher runs first; default-branch pushes get more than PRs
    rerun_of: RerunOf | None = None
    requested_at: datetime = Field(default_factory=utcnow)


class RunApproval(_Message):
    """A maintainer approved on the forge the untrusted runs that wait for approval.

    Either one run (`run_id`: GitHub's "Approve and run" on its check run) or the runs of a
    pull request (`pull_request`: a `/solstice approve` comment) that were created before
    `requested_at` and, with `commit_prefix`, whose commit starts with it. The orchestrator
    approves only runs of `repo`. The integration checked that `actor` (the forge login) may
    write to `repo` before publishing this; it travels on the runs queue, whose publishers are
    trusted like the integrations.
    """

    type: Literal["run_approval"] = "run_approval"
    request_id: str  # the forge's delivery id
    repo: Repo
    actor: str
    run_id: uuid.UUID | None = None
    pull_request: int | None = None
    commit_prefix: str = ""
    requested_at: datetime = Field(default_factory=utcnow)
    priority: int = 9  # a maintainer waits on it: ahead of every run request


class JobRequest(_Message):
    """One job of a run, ready to start, routed by its `runs_on` label."""

    type: Literal["job_request"] = "job_request"
    run_id: uuid.UUID
    job_id: uuid.UUID
    job_key: str
    runs_on: str
    attempt: int = 1
    priority: int = 0


class JobState(StrEnum):
    QUEUED = "queued"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    AWAITING_APPROVAL = "awaiting_approval"

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.ERROR,
                              JobState.CANCELLED, JobState.TIMED_OUT, JobState.SKIPPED})


class JobEvent(_Message):
    """A job changed state; integrations turn these into commit statuses / check runs."""

    type: Literal["job_event"] = "job_event"
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    run_id: uuid.UUID
    job_id: uuid.UUID
    job_key: str
    workflow_name: str
    state: JobState
    sequence: int  # per job, increasing: consumers drop an event older than one they applied
    repo: Repo
    commit_sha: str
    request_id: str
    description: str = ""
    log_url: str = ""
    failing_step: str | None = None
    log_tail: str = ""  # masked; the last lines of the failing step
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def routing_key(self) -> str:
        return f"job.{self.state.value}"


M = TypeVar("M", bound=_Message)


def encode(message: _Message) -> bytes:
    return message.model_dump_json().encode()


RunQueueMessage = Annotated[RunRequest | RunApproval, Field(discriminator="type")]
_RUN_QUEUE: TypeAdapter[RunRequest | RunApproval] = TypeAdapter(RunQueueMessage)


def decode_run_queue(body: bytes) -> RunRequest | RunApproval:
    """A message of the runs queue: a `RunRequest` or a `RunApproval`, told apart by `type`;
    `MessageError` as `decode`."""
    try:
        return _RUN_QUEUE.validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise MessageError(f"malformed runs queue message: {where}: {first['msg']}") from exc


def decode(body: bytes, model: type[M]) -> M:
    """Parse `body` as `model`, or raise `MessageError` saying why not."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if any(e["loc"][:1] == ("schema_version",) for e in exc.errors()):
            raise MessageError(f"unsupported schema_version for {model.__name__} "
                               f"(this build reads {SCHEMA_VERSION})") from exc
        raise MessageError(f"malformed {model.__name__}: {where}: {first['msg']}") from exc
