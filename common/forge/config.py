"""The settings every forge integration has; each integration's config model extends
`IntegrationConfig` with its own (sites and tokens, the GitHub App's identity...).

The keys are documented once per integration in docs/config.md.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from common.errors import ConfigError
from common.forge.webhook import BODY_TIMEOUT, MAX_BODY, BodyLimits
from common.retry import Backoff
from common.workflow import Limits


class RepoSettings(BaseModel):
    """Per-repository settings, keyed `owner/name` (case-insensitive)."""

    model_config = ConfigDict(extra="forbid")
    approval_for_untrusted: bool | None = None


class InboxSettings(BaseModel):
    """How the inbox worker retries a delivery it could not process (docs/config.md)."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(10, ge=1)
    retry_initial: float = Field(1.0, gt=0)
    retry_max: float = Field(300.0, gt=0)
    poll_interval: float = Field(0.5, gt=0)
    workflow_cache_entries: int = Field(1024, ge=0)
    keep_finished_days: float = Field(7.0, gt=0)
    # In a burst, how long a round may wait for the web edge to have no webhook in flight.
    yield_to_webhooks: float = Field(1.0, ge=0)

    @property
    def backoff(self) -> Backoff:
        return Backoff(initial=self.retry_initial, maximum=self.retry_max)


class IntegrationConfig(BaseModel):
    """Where the integration listens, its database and broker, and the policy both share."""

    model_config = ConfigDict(extra="forbid")
    listen_host: str = "127.0.0.1"
    listen_port: int = 8090
    database_url: str = "postgresql://postgres@127.0.0.1:5432/solstice"
    amqp_url: str | None = None
    broker_prefix: str = "solstice"
    events_queue: str = "forge-integration"
    approval_for_untrusted: bool = False
    max_body_bytes: int = Field(MAX_BODY, gt=0)
    body_timeout: float = Field(BODY_TIMEOUT, gt=0)
    repos: dict[str, RepoSettings] = Field(default_factory=dict)
    log_level: str = "info"
    # The bearer token orchestrators present to ask for checkout credentials
    # (common/forge/credentials.py); unset: none are served.
    internal_token: SecretStr | None = None
    inbox: InboxSettings = Field(default_factory=InboxSettings)
    # What one workflow file may cost to validate and plan (docs/config.md).
    workflow_limits: Limits = Field(default_factory=Limits)

    @field_validator("repos")
    @classmethod
    def _lower(cls, value: dict[str, RepoSettings]) -> dict[str, RepoSettings]:
        return {name.lower(): settings for name, settings in value.items()}

    @property
    def body_limits(self) -> BodyLimits:
        return BodyLimits(self.max_body_bytes, self.body_timeout)

    def check(self) -> None:
        """Refuse a configuration the service cannot run with (extended per integration)."""
        if not self.amqp_url:
            raise ConfigError("no amqp_url: runs would reach no orchestrator",
                              hint="set amqp_url (or --amqp-url) to the orchestrators' RabbitMQ URL")

    def approval_for(self, full_name: str) -> bool:
        """Whether untrusted runs of `full_name` wait for approval."""
        repo = self.repos.get(full_name.lower())
        if repo is not None and repo.approval_for_untrusted is not None:
            return repo.approval_for_untrusted
        return self.approval_for_untrusted

    def ready_fields(self) -> dict[str, str]:
        """What the `ready` log line says about this service besides its URL."""
        return {}
