"""Per-job checkout credentials, asked of the integration that holds the forge's credentials.

`[orchestrator.checkout_credentials.<forge>]` names, per forge kind (`github`, `forgejo`,
`gitea`), the integration to ask (`url`) and the bearer token it expects (`token` or
`token_file`, its `internal_token`). A job of a forge without such a table is cloned without
credentials, as a public repository. The protocol is `common.forge.credentials`. The same
tables say which integrations `ciadm inbox` asks (`orchestrator.integration_inbox`).

The executor asks before it provisions the job's machine: a job whose credential cannot be
obtained ends `error` without a machine. The credential lives in the job's session only (the
runner gets it in `GetJob`; it is masked in the job's log); once the job's machine is gone it
is handed back to the integration, which revokes it where the forge can (GitHub).
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, model_validator

from common.errors import ConfigError, SolsticeError
from common.forge.credentials import (
    PATH,
    REVOKE_PATH,
    CheckoutCredential,
    CredentialRequest,
    RevokeRequest,
)
from common.messages import Repo
from common.retry import Backoff, retry_async

ATTEMPTS = 3
# Handing a credential back is not worth holding a job's result up for long.
REVOKE_TIMEOUT = 5.0
log = logging.getLogger(__name__)


class CredentialSource(BaseModel):
    """Where the checkout credentials of one forge kind come from."""

    model_config = ConfigDict(extra="forbid")
    url: str  # the integration's base URL, e.g. http://127.0.0.1:8091
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout: float = 10.0

    @model_validator(mode="after")
    def _one_token(self) -> CredentialSource:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token and token_file")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return self

    def bearer(self) -> str:
        """The token, read from `token_file` when that is how it is given."""
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        try:
            value = self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read checkout_credentials token_file {self.token_file}: "
                              f"{exc.strerror}") from exc
        if not value:
            raise ConfigError(f"checkout_credentials token_file {self.token_file} is empty")
        return value


class CredentialUnavailable(SolsticeError):
    """The integration could not give the job a checkout credential."""


class _Retry(Exception):
    """A failure worth asking again for (no answer, or a 5xx)."""


class CheckoutCredentials:
    """Asks the integrations for checkout credentials; one HTTP client per forge kind."""

    def __init__(self, sources: dict[str, CredentialSource], *,
                 backoff: Backoff = Backoff(initial=0.5, maximum=4.0)) -> None:
        self._clients = {
            forge: (httpx.AsyncClient(base_url=source.url.rstrip("/"), timeout=source.timeout,
                                      headers={"Authorization": f"Bearer {source.bearer()}"}),
                    source.url)
            for forge, source in sources.items()}
        self._backoff = backoff

    async def aclose(self) -> None:
        for client, _ in self._clients.values():
            await client.aclose()

    async def for_job(self, repo: Repo, job_id: uuid.UUID) -> CheckoutCredential | None:
        """The credential job `job_id` clones `repo` with; None when none is configured for
        its forge or the integration has none for `repo`. Raises `CredentialUnavailable`."""
        entry = self._clients.get(repo.forge)
        if entry is None:
            return None
        client, url = entry
        body = CredentialRequest(repo=repo, job_id=job_id).model_dump(mode="json")
        what = f"checkout credential for {repo.full_name} from {url}"

        async def ask() -> httpx.Response:
            try:
                response = await client.post(PATH, json=body)
            except httpx.TransportError as exc:
                raise _Retry(f"{what}: no answer ({type(exc).__name__}: {exc})") from exc
            if response.status_code >= 500:
                raise _Retry(f"{what}: HTTP {response.status_code} {error_reason(response)}")
            return response

        try:
            response = await retry_async(ask, retry_on=(_Retry,), attempts=ATTEMPTS,
                                         backoff=self._backoff, describe=what)
        except _Retry as exc:
            raise CredentialUnavailable(str(exc), hint="is the integration running and "
                                        "able to reach its forge?") from exc
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise CredentialUnavailable(
                f"{what}: HTTP {response.status_code} {error_reason(response)}",
                hint="the orchestrator's checkout_credentials token must equal the "
                     "integration's internal_token")
        try:
            return CheckoutCredential.model_validate_json(response.content)
        except ValidationError as exc:
            raise CredentialUnavailable(f"{what}: malformed answer") from exc

    async def revoke(self, repo: Repo, job_id: uuid.UUID, credential: CheckoutCredential) -> None:
        """Hand the job's credential back for revocation; a failure is only logged (a GitHub
        token expires by itself within the hour)."""
        entry = self._clients.get(repo.forge)
        if entry is None:
            return
        client, url = entry
        body = RevokeRequest(repo=repo, job_id=job_id, credential=credential).model_dump(mode="json")
        try:
            response = await client.post(REVOKE_PATH, json=body, timeout=REVOKE_TIMEOUT)
        except httpx.TransportError as exc:
            log.warning("checkout credential not handed back", extra={
                "job_id": str(job_id), "integration": url, "error": f"{type(exc).__name__}: {exc}"})
            return
        if response.status_code != 204:
            log.warning("checkout credential not handed back", extra={
                "job_id": str(job_id), "integration": url,
                "error": f"HTTP {response.status_code} {error_reason(response)}"})


def error_reason(response: httpx.Response) -> str:
    """The `error` of an integration's JSON error answer, else the start of its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("error", "")) if isinstance(body, dict) else ""
