"""Settings of `solstice-forge-integration`, read by `common.config.load_config`.

```toml
[forge_integration]
listen_host = "0.0.0.0"
listen_port = 8090
database_url = "postgresql://solstice@db/solstice"
amqp_url = "amqp://solstice:...@mq/"
webhook_secret = "..."          # global; a site's or a repository's secret replaces it
manual_token = "..."            # bearer token of POST /runs; no token: manual runs disabled
max_body_bytes = 26214400       # larger webhook bodies are refused with 413
body_timeout = 10.0             # seconds to receive a body; slower ones are answered 408
internal_token = "..."          # orchestrators' bearer for checkout credentials

[forge_integration.sites.forgejo]   # one table per forge kind served: forgejo, gitea
url = "https://codeberg.org"
token = "..."                   # API token: read contents, read permissions, write statuses
checkout_token = "..."          # read token jobs clone private repositories with

[forge_integration.repos."acme/app"]
webhook_secret = "..."
approval_for_untrusted = true   # untrusted pull requests wait for `/solstice approve` (or `ciadm approve`)
```
Environment: `SOLSTICE_FORGE_INTEGRATION__SITES__FORGEJO__TOKEN=...`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from common.errors import ConfigError
from common.forge import config as base

SECTION = "forge_integration"
ForgeKind = Literal["forgejo", "gitea"]


class Site(BaseModel):
    """One Forgejo or Gitea instance: where its API is and how to authenticate to it."""

    model_config = ConfigDict(extra="forbid")
    url: str
    token: SecretStr = SecretStr("")
    webhook_secret: SecretStr | None = None
    timeout: float = 10.0  # seconds per API request
    # The read token jobs clone the site's private repositories with (forge_integration/checkout.py).
    checkout_token: SecretStr | None = None
    checkout_username: str = "solstice"

    @field_validator("url")
    @classmethod
    def _strip(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"


class RepoSettings(base.RepoSettings):
    """Per-repository settings, keyed `owner/name` (case-insensitive)."""

    webhook_secret: SecretStr | None = None
    checkout_token: SecretStr | None = None  # replaces the site's for this repository
    checkout_username: str = "solstice"


class ForgeIntegrationConfig(base.IntegrationConfig):
    """Everything the service reads at start; see the module docstring for the file layout."""

    webhook_secret: SecretStr | None = None
    manual_token: SecretStr | None = None
    insecure_no_signature: bool = False
    sites: dict[ForgeKind, Site] = Field(default_factory=dict)
    repos: dict[str, RepoSettings] = Field(default_factory=dict)  # type: ignore[assignment]

    def check(self) -> None:
        """Refuse a configuration the service cannot run safely with."""
        if not self.sites:
            raise ConfigError("no forge configured",
                              hint="add [forge_integration.sites.forgejo] (or .gitea) with url and token")
        if not self.insecure_no_signature and not self.any_secret():
            raise ConfigError(
                "no webhook secret configured: anyone could start runs",
                hint="set webhook_secret (global, per site or per repository), or pass "
                     "--insecure-no-signature for local development only")
        super().check()

    def ready_fields(self) -> dict[str, str]:
        return {"forges": ",".join(self.sites)}

    def any_secret(self) -> bool:
        return any(s is not None and s.get_secret_value() for s in
                   [self.webhook_secret, *(site.webhook_secret for site in self.sites.values()),
                    *(repo.webhook_secret for repo in self.repos.values())])
    def candidate_secrets(self, forge: ForgeKind) -> list[str]:
        """Every distinct secret a webhook to `forge`'s endpoint may be signed with: each
        repository's, the site's and the global one (the body's repository picks the one it
        must be, but only once the signature is known to be one of these)."""
        site = self.sites[forge].webhook_secret if forge in self.sites else None
        candidates = [repo.webhook_secret for repo in self.repos.values()] + [site, self.webhook_secret]
        return list(dict.fromkeys(s.get_secret_value() for s in candidates
                                  if s is not None and s.get_secret_value()))

    def secret_for(self, forge: ForgeKind, full_name: str | None) -> str | None:
        """The secret webhooks about `full_name` must be signed with: the repository's, else the
        site's, else the global one; None when none is configured."""
        repo = self.repos.get((full_name or "").lower())
        for candidate in (repo.webhook_secret if repo else None,
                          self.sites[forge].webhook_secret if forge in self.sites else None,
                          self.webhook_secret):
            if candidate is not None and candidate.get_secret_value():
                return candidate.get_secret_value()
        return None
