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
redelivery_interval = 300.0     # seconds between passes asking GitHub to redeliver failed webhooks
redelivery_lookback = 86400.0   # how far back a pass looks (GitHub keeps 3 days)
redelivery_attempts = 5         # failed attempts of one webhook after which it is left alone

[github_integration.repos."acme/app"]
approval_for_untrusted = true   # untrusted pull requests wait for `/solstice approve` (or `ciadm approve`)
```
Environment: `SOLSTICE_GITHUB_INTEGRATION__WEBHOOK_SECRET=...`.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from common.errors import ConfigError
from common.forge.config import IntegrationConfig, RepoSettings
from common.workflow import DEFAULT_PATH

SECTION = "github_integration"
__all__ = ["SECTION", "GitHubIntegrationConfig", "RepoSettings"]


class GitHubIntegrationConfig(IntegrationConfig):
    """Everything the service reads at start; see the module docstring for the file layout."""

    listen_port: int = 8091
    events_queue: str = "github-integration"
    app_id: int | None = None
    private_key_path: Path | None = None
    webhook_secret: SecretStr = SecretStr("")
    api_url: str = "https://api.github.com"
    api_timeout: float = Field(10.0, gt=0)  # seconds per GitHub API request
    workflow_path: str = DEFAULT_PATH
    # Asking GitHub to redeliver the webhooks it failed to deliver (github_integration.recovery).
    redelivery_interval: float = Field(300.0, gt=0)
    redelivery_lookback: float = Field(86400.0, gt=0, le=3 * 86400)
    redelivery_attempts: int = Field(5, ge=1)

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

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
        super().check()

    def ready_fields(self) -> dict[str, str]:
        return {"app_id": str(self.app_id), "api_url": self.api_url}
    def private_key_pem(self) -> bytes:
        """The App's private key file, or `ConfigError` saying why it cannot be read."""
        assert self.private_key_path is not None, "check() first"
        try:
            return self.private_key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the GitHub App private key {self.private_key_path}: "
                              f"{exc.strerror}", hint="check private_key_path and its permissions"
                              ) from exc
