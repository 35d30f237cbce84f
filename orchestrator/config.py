"""The orchestrator's settings: `[orchestrator]` in the TOML file, `SOLSTICE_ORCHESTRATOR__*`,
then flags (see `common.config.load_config`).

`database_url` and `amqp_url` unset mean the standalone mode: an embedded PostgreSQL under
`state_dir` and the in-process broker.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from common.admin_auth import DEFAULT_ADMIN_ADDRESS
from common.workflow import Limits
from orchestrator.blobstore import BlobStoreConfig
from orchestrator.checkout_credentials import CredentialSource
from orchestrator.db.embedded import default_state_dir
from orchestrator.secretstore.keys import SecretKeyConfig, parse_secret_keys


def parse_capacity(value: Any) -> dict[str, int]:
    """`"illumos-stable=4,ubuntu-22.04=2"` (flag / env form) or a TOML table, as a dict."""
    if isinstance(value, dict):
        pairs = value.items()
    elif isinstance(value, str):
        pairs = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            label, sep, slots = part.partition("=")
            if not sep or not label.strip():
                raise ValueError(f"capacity entry {part!r} is not LABEL=SLOTS")
            pairs.append((label.strip(), slots.strip()))
    else:
        raise ValueError("capacity must be LABEL=SLOTS,... or a table")
    capacity = {}
    for label, slots in pairs:
        try:
            number = int(slots)
        except (TypeError, ValueError):
            raise ValueError(f"capacity of {label!r} must be a whole number, not {slots!r}") from None
        if number < 1:
            raise ValueError(f"capacity of {label!r} must be at least 1")
        capacity[label] = number
    return capacity


def parse_repository_days(value: Any) -> Any:
    """`"owner/name=DAYS,..."` (the environment's form) as a dict; a TOML table as it is."""
    if not isinstance(value, str):
        return value
    days = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, number = part.partition("=")
        if not sep or "/" not in name:
            raise ValueError(f"retention entry {part!r} is not OWNER/NAME=DAYS")
        days[name.strip()] = number.strip()
    return days


class OrchestratorConfig(BaseModel):
    """Every setting of `solstice-orchestrator`; defaults suit one machine."""

    # A misspelt key is an error, not a default silently kept.
    model_config = ConfigDict(extra="forbid")

    host_name: str = Field(default_factory=socket.gethostname)
    state_dir: Path = Field(default_factory=default_state_dir)
    database_url: str | None = None  # unset: embedded PostgreSQL under state_dir
    amqp_url: str | None = None      # unset: the in-process broker
    broker_prefix: str = "solstice"
    # Where the Runner gRPC service listens, and the address runners are told to dial. Job
    # machines reach this port and no other of the orchestrator's.
    grpc_listen: str = "127.0.0.1:50051"
    grpc_advertise: str | None = None
    # The Admin gRPC service (`ciadm`) on a listener of its own, never forwarded to a job.
    admin_listen: str = DEFAULT_ADMIN_ADDRESS
    # The token every Admin call (and, by default, every web page) must present: one of the
    # two is required unless `insecure_admin_no_auth` (loopback only; see orchestrator/adminauth.py).
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    insecure_admin_no_auth: bool = False
    # Web log pages (the forges' status links): served on HOST:PORT when set; `public_url` is
    # their base as users reach it (default: http://<web_listen>). `web_access` (see
    # orchestrator/webauth.py): "signed" (the links the integrations publish carry a grant to
    # their run, valid `web_grant_ttl` seconds; an admin token opens everything), "token" (an
    # admin token only) or "public" (every log to anyone).
    web_listen: str | None = None
    public_url: str | None = None
    web_access: Literal["signed", "token", "public"] = "signed"
    # The key grants and web sessions are signed with, shared by every orchestrator host;
    # unset: derived from the admin token (then every host needs the same admin token).
    web_grant_key_file: Path | None = None
    web_grant_ttl: float = Field(default=30 * 24 * 3600.0, gt=0)
    backend: str = "local"
    # The local backend runs jobs without any isolation; it must be asked for by name.
    allow_local_backend: bool = False
    capacity: dict[str, int] = Field(default_factory=lambda: {"local": 2})
    default_job_timeout: int = Field(default=3600, gt=0)
    # Seconds past a job's own timeout before the orchestrator ends it regardless.
    timeout_grace: float = Field(default=30.0, ge=0)
    # The runner must fetch its job this soon after its machine started.
    boot_timeout: float = Field(default=300.0, gt=0)
    # A runner silent this long (no heartbeat, log or report) is dead: the job ends `error`.
    heartbeat_timeout: float = Field(default=30.0, gt=0)
    # After a cancel, how long the runner has to stop its step and report.
    cancel_grace: float = Field(default=15.0, ge=0)
    # A host's lease on a running job; renewed every third of it.
    lease_ttl: float = Field(default=60.0, gt=1)
    # Host registry: heartbeat period, and the silence after which other hosts take this
    # host's jobs back (see orchestrator/hosts.py, orchestrator/reaper.py).
    host_heartbeat_interval: float = Field(default=5.0, gt=0)
    host_stale_after: float = Field(default=30.0, gt=0)
    # How often the reaper looks for dead hosts' jobs and leftover machines.
    reap_interval: float = Field(default=30.0, gt=0)
    # Times a job is re-queued after its host died before it ends `error` (a failing step
    # is never retried).
    max_retries: int = Field(default=2, ge=0)
    # On SIGTERM: how long running jobs may go on before they are handed back to the queue.
    drain_timeout: float = Field(default=600.0, ge=0)
    # ReportResult waits this long for the log chunks the runner says it sent.
    log_drain_timeout: float = Field(default=10.0, ge=0)
    # Artifacts: bytes per file and per job attempt (over all its uploads), how many uploads
    # this host writes at once (each holds a database connection of its own), and the blob
    # store they go to (`[orchestrator.blob_store]`).
    max_artifact_file_bytes: int = Field(default=4 * 1024 ** 3, gt=0)
    max_artifact_job_bytes: int = Field(default=8 * 1024 ** 3, gt=0)
    artifact_upload_concurrency: int = Field(default=4, ge=1)
    blob_store: BlobStoreConfig = Field(default_factory=BlobStoreConfig)
    # A job's log quota: its bytes in all, and how far past the last chunk stored without a
    # gap a chunk may arrive. The first chunk past either fails the job (see rpc.StreamLogs).
    log_quota_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    log_reorder_window: int = Field(default=1024, ge=1)
    # How often each host looks for ended jobs' logs still in PostgreSQL to compact into the
    # blob store (a host compacts the jobs it ends at once; see orchestrator/compaction.py).
    log_compaction_interval: float = Field(default=60.0, gt=0)
    # Retention (orchestrator/retention.py): a finished run is deleted, with its jobs, logs
    # and blobs, this many days after it ended; per repository ("owner/name" = days) instead;
    # runs of the default branch and of tags are kept at least `retention_days_default_branch`.
    # 0 keeps for ever. One host sweeps at a time, every `retention_interval` seconds.
    retention_days: int = Field(default=90, ge=0)
    retention_days_default_branch: int = Field(default=365, ge=0)
    retention_repositories: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    retention_interval: float = Field(default=3600.0, gt=0)


    # Held machines (a failed job's, kept for `ciadm shell`): at most this many per host; a
    # hold asked beyond it is not granted (the log says why). See orchestrator/holds.py.
    max_held: int = Field(default=2, ge=0)
    log_level: str = "info"
    # The keys sealing stored secrets (files or environment variables, never the database);
    # the last one listed encrypts. See orchestrator/secretstore/keys.py and docs/config.md.
    secret_keys: list[SecretKeyConfig] = Field(default_factory=list)
    # What one workflow file may cost to validate and plan (docs/config.md).
    workflow_limits: Limits = Field(default_factory=Limits)
    # The backends' own tables, `[orchestrator.bhyve]` and `[orchestrator.qemu]`: read and
    # checked by the backend when it is the one chosen.
    bhyve: dict[str, Any] | None = None
    qemu: dict[str, Any] | None = None
    # Per forge kind, the integration that gives jobs their checkout credentials
    # (orchestrator/checkout_credentials.py); a forge not listed is cloned without any. Also
    # the integrations whose webhook inboxes `ciadm inbox` shows (orchestrator/integration_inbox.py).
    checkout_credentials: dict[Literal["github", "forgejo", "gitea"], CredentialSource] = Field(
        default_factory=dict)

    @field_validator("capacity", mode="before")
    @classmethod
    def _capacity(cls, value: Any) -> dict[str, int]:
        return parse_capacity(value)

    @field_validator("secret_keys", mode="before")
    @classmethod
    def _secret_keys(cls, value: Any) -> Any:
        return parse_secret_keys(value)


    @field_validator("retention_repositories", mode="before")
    @classmethod
    def _retention_repositories(cls, value: Any) -> Any:
        return parse_repository_days(value)

    @property
    def advertise_url(self) -> str:
        return self.grpc_advertise or self.grpc_listen
