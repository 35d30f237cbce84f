"""Checkout credentials for jobs of GitHub repositories (`common.forge.credentials`).

Each job gets a fresh installation token restricted to its one repository with
`contents: read` (GitHub adds `metadata: read`), minted with the App's key, which only the
integration holds. It is revoked when the orchestrator hands it back at the job's end, and
GitHub expires it within the hour anyway. Git over HTTPS takes it as the password of the user
`x-access-token`.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

from common.forge.credentials import CheckoutCredential, CredentialRequest, RevokeRequest
from common.forge.errors import WebhookRejected
from github_integration.api import GitHubApi
from github_integration.errors import GitHubApiError

log = logging.getLogger(__name__)

USERNAME = "x-access-token"


class CheckoutTokens:
    """Issues checkout credentials through the App's installations."""

    def __init__(self, api: GitHubApi) -> None:
        self._api = api

    async def issue(self, request: CredentialRequest) -> CheckoutCredential:
        """A token reading `request.repo` alone; raises `GitHubApiError` if GitHub refuses."""
        repo = request.repo
        if repo.forge != "github":
            raise WebhookRejected(400, f"{repo.full_name} is a {repo.forge} repository, "
                                       "not one of this GitHub App's",
                                  hint="checkout_credentials.github must name the GitHub "
                                       "integration")
        installation_id = repo.installation_id or await self._api.repo_installation(
            repo.owner, repo.name)
        token = await self._api.auth.checkout_token(installation_id, repo.full_name)
        return CheckoutCredential(username=USERNAME, password=token.token,
                                  expires_at=datetime.fromtimestamp(token.expires_at, UTC))

    async def revoke(self, handed_back: RevokeRequest) -> None:
        """Revoke a job's token; a failure is logged (the token expires within the hour)."""
        try:
            await self._api.auth.revoke(handed_back.credential.password)
        except GitHubApiError as exc:
            log.warning("checkout token not revoked; it expires by itself",
                        extra={"job_id": str(handed_back.job_id), "error": exc.message})
