"""GitHub App authentication: the App's JWT and cached installation access tokens.

A GitHub App proves who it is with a short JWT signed by its private key (RS256), and uses
that JWT only to mint installation access tokens, which then authorise every repository call.
Installation tokens live one hour; `AppAuth` caches one per installation and repository and
mints a new one a margin before GitHub's `expires_at`, so a request never goes out with a
token about to lapse.

Every token is scoped to the one repository it is minted for (`repositories` in the request):
GitHub refuses to mint it when the installation has no access to that repository, and
`AppAuth` refuses one whose granted repositories do not include it. So an installation id
taken from a webhook body can never yield a token that reaches another account's repository,
nor one that reaches more than the repository the run is about.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.errors import ConfigError
from github_integration.errors import FORGE, GitHubApiError

# GitHub rejects a JWT whose exp lies more than 10 minutes ahead of its clock, and advises
# back-dating iat by 60 s against clock drift; exp = iat + 600 s keeps both rules.
JWT_BACKDATE = 60
JWT_LIFETIME = 600
# Mint a fresh installation token this long before the old one expires: long enough for a
# slow request (or a retried outbox delivery) started with the old token to finish in time.
DEFAULT_REFRESH_MARGIN = 300.0
# What a job's clone needs, and all its token may do.
CHECKOUT_PERMISSIONS = {"contents": "read"}


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    """Parse the App's PEM private key, or raise `ConfigError` saying what is wrong."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("the GitHub App private key is not a readable PEM private key",
                          hint="download a new key from the App's settings page "
                               "(it starts with -----BEGIN RSA PRIVATE KEY-----)") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("the GitHub App private key is not an RSA key",
                          hint="GitHub App keys are RSA; download one from the App's settings")
    return key


@dataclass(frozen=True)
class InstallationToken:
    """An installation access token and when GitHub said it expires (epoch seconds)."""

    token: str
    expires_at: float


class AppAuth:
    """Mints the App JWT and installation tokens for one GitHub App.

    `http` is an `httpx.AsyncClient` whose `base_url` is the GitHub API root. `clock` returns
    epoch seconds; tests pass their own to move time without sleeping.
    """

    def __init__(self, app_id: int | str, private_key: rsa.RSAPrivateKey, http: httpx.AsyncClient,
                 *, refresh_margin: float = DEFAULT_REFRESH_MARGIN,
                 clock: Callable[[], float] = time.time) -> None:
        self.app_id = str(app_id)
        self._key = private_key
        self._http = http
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._tokens: dict[tuple[int, str], InstallationToken] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    def app_jwt(self) -> str:
        """A fresh RS256 JWT identifying the App (iat 60 s ago, exp 9 min ahead)."""
        iat = int(self._clock()) - JWT_BACKDATE
        return jwt.encode({"iat": iat, "exp": iat + JWT_LIFETIME, "iss": self.app_id},
                          self._key, algorithm="RS256")

    def app_headers(self) -> dict[str, str]:
        """Headers authenticating a request as the App itself."""
        return {"Authorization": f"Bearer {self.app_jwt()}"}

    async def installation_token(self, installation_id: int, repository: str) -> str:
        """A token of `installation_id` for `repository` (`owner/name`) only, from the cache
        unless it is near its expiry.

        Raises `GitHubApiError` (not retryable, status 422) when the installation has no access
        to `repository`.
        """
        key = (installation_id, repository.lower())
        cached = self._tokens.get(key)
        if cached and self._fresh(cached):
            return cached.token
        # One mint per key at a time: concurrent callers wait for it and share it.
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached and self._fresh(cached):
                return cached.token
            minted = await self._mint(installation_id, repository)
            self._tokens[key] = minted
            return minted.token

    async def checkout_token(self, installation_id: int, repository: str) -> InstallationToken:
        """A fresh token of `installation_id` that may only read `repository`'s contents
        (`contents: read`, and the `metadata: read` GitHub always adds), for one job's clone.
        Never cached: each job gets its own, which GitHub expires within the hour."""
        return await self._mint(installation_id, repository, CHECKOUT_PERMISSIONS)

    async def revoke(self, token: str) -> None:
        """Revoke installation token `token` (GitHub's `DELETE /installation/token`, which the
        token authorises itself); one already expired or revoked is left as it is. Raises
        `GitHubApiError` when GitHub cannot be reached or refuses otherwise."""
        what = "revoking an installation token"
        try:
            response = await self._http.delete("/installation/token",
                                               headers={"Authorization": f"token {token}"})
        except httpx.TransportError as exc:
            raise GitHubApiError.unreachable(FORGE, what, exc) from exc
        if response.status_code not in (204, 401):
            raise GitHubApiError.from_response(FORGE, what, response)

    def invalidate(self, installation_id: int) -> None:
        """Forget the installation's cached tokens (GitHub refused one, or it went away)."""
        for key in [key for key in self._tokens if key[0] == installation_id]:
            del self._tokens[key]

    def _fresh(self, token: InstallationToken) -> bool:
        return token.expires_at - self._refresh_margin > self._clock()

    async def _mint(self, installation_id: int, repository: str,
                    permissions: dict[str, str] | None = None) -> InstallationToken:
        what = f"installation token of installation {installation_id} for {repository}"
        no_access = GitHubApiError(
            f"GitHub installation {installation_id} has no access to {repository}",
            status=422, retryable=False,
            hint="the webhook names an installation that does not cover its repository")
        name = repository.rpartition("/")[2]
        asked: dict[str, object] = {"repositories": [name]}
        if permissions is not None:
            asked["permissions"] = permissions
        try:
            response = await self._http.post(f"/app/installations/{installation_id}/access_tokens",
                                             headers=self.app_headers(), json=asked)
        except httpx.TransportError as exc:
            raise GitHubApiError.unreachable(FORGE, what, exc) from exc
        if response.status_code == 422:  # GitHub: a repository the installation cannot access
            raise no_access
        if response.status_code != 201:
            raise GitHubApiError.from_response(FORGE, what, response)
        body = response.json()
        try:
            expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
            token = InstallationToken(token=body["token"], expires_at=expires_at.timestamp())
            granted = {str(r["full_name"]).lower() for r in body["repositories"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise GitHubApiError(f"GitHub {what}: malformed answer ({exc!r})",
                                 status=response.status_code, retryable=True) from exc
        # The names are the installation account's: a repository of the same name elsewhere
        # (the body named another account's installation) is not the one asked for.
        if granted != {repository.lower()}:
            raise no_access
        # GitHub grants at most what was asked; a wider grant would reach into the job.
        if permissions is not None and not _within(body_permissions(body), permissions):
            raise GitHubApiError(f"GitHub {what}: granted {body_permissions(body)}, more than "
                                 f"the {permissions} asked for", status=201, retryable=False)
        return token


def body_permissions(body: dict[str, object]) -> dict[str, str]:
    """The `permissions` of a token GitHub minted, as `{name: level}`."""
    permissions = body.get("permissions")
    return ({str(k): str(v) for k, v in permissions.items()}
            if isinstance(permissions, dict) else {})


def _within(granted: dict[str, str], asked: dict[str, str]) -> bool:
    allowed = {**asked, "metadata": "read"}
    return all(name in allowed and (level == "read" or allowed[name] == level)
               for name, level in granted.items())
