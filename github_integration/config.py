"""Settings of `solstice-github-integration`, read by `common.config.load_config`.

```toml
[github_integration]
listen_host = "0.0.0.0"
listen_port = 8091
database_url = "postgresql://solstice@db/solstice"
amqp_url = "amqp://solstice:...@mq/"
app_id = 123456
private_key_path = "/etc/solstice/github-app.pem"   # the App's key, from its settings page
webhook_secret = "..."                              # the App's webhook secret
api_url = "https://api.github.com"                  # GitHub Enterprise: https://HOST/api/v3
approval_for_untrusted = false
max_body_bytes = 26214400                           # larger webhook bodies are refused with 413
body_timeout = 10.0                                 # seconds to receive a body, else 408
internal_token = "..."                              # orchestrators' bearer for checkout tokens

[github_integration.repos."acme/app"]
approval_for_untrusted = true   # untrusted pull requests wait for `/solstice approve` (or `ciadm approve`)
```
Environment: `SOLSTICE_GITHUB_INTEGRATION__WEBHOOK_SECRET=...`.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from common.errors import ConfigError
from common.forge.webhook import BODY_TIMEOUT, MAX_BODY, BodyLimits
from common.workflow import DEFAULT_PATH, Limits

SECTION = "github_integration"


class RepoSettings(BaseModel):
    """Per-repository settings, keyed `owner/name` (case-insensitive)."""

    model_config = ConfigDict(extra="forbid")
    approval_for_untrusted: bool | None = None


class GitHubIntegrationConfig(BaseModel):
    """Everything the service reads at start; see the module docstring for the file layout."""

    model_config = ConfigDict(extra="forbid")
    listen_host: str = "127.0.0.1"
    listen_port: int = 8091
    database_url: str = "postgresql://postgres@127.0.0.1:5432/solstice"
    amqp_url: str | None = None
    broker_prefix: str = "solstice"
    events_queue: str = "github-integration"
    app_id: int | None = None
    private_key_path: Path | None = None
    webhook_secret: SecretStr = SecretStr("")
    api_url: str = "https://api.github.com"
    api_timeout: float = 10.0  # seconds per GitHub API request
    workflow_path: str = DEFAULT_PATH
    approval_for_untrusted: bool = False
    max_body_bytes: int = Field(MAX_BODY, gt=0)
    body_timeout: float = Field(BODY_TIMEOUT, gt=0)
    repos: dict[str, RepoSettings] = Field(default_factory=dict)
    # The bearer token orchestrators present to ask for checkout credentials
    # (common/forge/credentials.py); unset: none are served.
    internal_token: SecretStr | None = None
    log_level: str = "info"
    # What one workflow file may cost to validate and plan (docs/config.md).
    workflow_limits: Limits = Field(default_factory=Limits)

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("repos")
    @classmethod
    def _lower(cls, value: dict[str, RepoSettings]) -> dict[str, RepoSettings]:
        return {name.lower(): settings for name, settings in value.items()}

    @property
    def body_limits(self) -> BodyLimits:
        return BodyLimits(self.max_body_bytes, self.body_timeout)

    def check(self) -> None:
        """Refuse a configuration the service cannot run with."""
        if self.app_id is None or self.private_key_path is None:
            raise ConfigError("app_id and private_key_path are required",
                              hint="both are on the GitHub App's settings page "
                                   "(generate a private key there)")
        if not self.webhook_secret.get_secret_value():
            raise ConfigError("no webhook secret configured: anyone could start runs",
                              hint="set the App's webhook secret as webhook_secret "
                                   "(or SOLSTICE_GITHUB_INTEGRATION__WEBHOOK_SECRET)")
        if not self.amqp_url:
            raise ConfigError("no amqp_url: runs would reach no orchestrator",
                              hint="set amqp_url (or --amqp-url) to the orchestrators' RabbitMQ URL")

    def private_key_pem(self) -> bytes:
        """The App's private key file, or `ConfigError` saying why it cannot be read."""
        assert self.private_key_path is not None, "check() first"
        try:
            return self.private_key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the GitHub App private key {self.private_key_path}: "
                              f"{exc.strerror}", hint="check private_key_path and its permissions"
                              ) from exc

    def approval_for(self, full_name: str) -> bool:
        """Whether untrusted runs of `full_name` wait for approval."""
        repo = self.repos.get(full_name.lower())
        if repo is not None and repo.approval_for_untrusted is not None:
            return repo.approval_for_untrusted
        return self.approval_for_untrusted
