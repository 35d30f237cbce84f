"""Checkout credentials for jobs of Forgejo and Gitea repositories (`common.forge.credentials`).

Neither forge mints short-lived repository tokens, so the credential is a read token from the
configuration: the repository's `checkout_token` if it has one, else its site's. Use the
token of a user that may only read the repositories it serves (scope `read:repository`); it
does not expire with the job and is not revoked when it is handed back (see docs/SECURITY.md,
Checkout credentials). Git over HTTPS
takes it as the password; the user name is `checkout_username`.
"""
from __future__ import annotations

from common.forge.credentials import CheckoutCredential, CredentialRequest, RevokeRequest
from common.forge.errors import WebhookRejected
from forge_integration.config import ForgeIntegrationConfig


class ConfiguredTokens:
    """Issues the configured read tokens."""

    def __init__(self, config: ForgeIntegrationConfig) -> None:
        self._config = config

    async def issue(self, request: CredentialRequest) -> CheckoutCredential | None:
        """The repository's token, else its site's; None when neither is configured."""
        repo = request.repo
        site = self._config.sites.get(repo.forge)  # type: ignore[call-overload]
        if site is None:
            raise WebhookRejected(400, f"{repo.full_name} is a {repo.forge} repository; this "
                                       f"integration serves {', '.join(self._config.sites)}")
        settings = self._config.repos.get(repo.full_name.lower())
        for source in (settings, site):
            if source is not None and source.checkout_token is not None:
                return CheckoutCredential(username=source.checkout_username,
                                          password=source.checkout_token.get_secret_value())
        return None

    async def revoke(self, handed_back: RevokeRequest) -> None:
        """Nothing to do: a configured token outlives the job (module docstring)."""
