"""The forge integrations' webhook inboxes, asked over HTTP for `ciadm inbox`.

The integrations an orchestrator knows are those of its `[orchestrator.checkout_credentials.
<forge>]` tables: each names the integration serving the forge (`url`) and the bearer it
expects (`token`, its `internal_token`). Several forges may name one integration (Forgejo and
Gitea are served by one); it is asked once. The protocol is `common.forge.inbox_api`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from common.errors import SolsticeError
from common.forge.inbox import InboxEntry, InboxState
from common.forge.inbox_api import PATH, InboxListing, retry_path
from orchestrator.checkout_credentials import CredentialSource, error_reason

CONFIG_HINT = ("set [orchestrator.checkout_credentials.<forge>] (url = the integration's "
               "address, token = its internal_token) for each forge integration")


class NoIntegration(SolsticeError):
    """No integration is configured (for the forge asked about)."""


class NotParked(SolsticeError):
    """The integration has no such parked delivery."""


class IntegrationUnavailable(SolsticeError):
    """The integration did not answer, or not as the protocol says."""


@dataclass(frozen=True)
class Integration:
    """One integration: its base URL, the forges configured with it, how to reach it."""

    url: str
    forges: tuple[str, ...]
    source: CredentialSource


@dataclass(frozen=True)
class IntegrationInbox:
    """What one integration answered: its listing, or why there is none."""

    integration: Integration
    listing: InboxListing | None
    error: str = ""


def integrations(sources: Mapping[str, CredentialSource]) -> list[Integration]:
    """The distinct integrations of `sources` (by URL), in the order first configured."""
    by_url: dict[str, list[str]] = {}
    first: dict[str, CredentialSource] = {}
    for forge, source in sources.items():
        url = source.url.rstrip("/")
        by_url.setdefault(url, []).append(forge)
        first.setdefault(url, source)
    return [Integration(url, tuple(forges), first[url]) for url, forges in by_url.items()]


class IntegrationInboxes:
    """Lists and retries the inboxes of the integrations configured in `sources`."""

    def __init__(self, sources: Mapping[str, CredentialSource]) -> None:
        self._sources = dict(sources)
        self._integrations = integrations(sources)

    def _require_any(self) -> None:
        if not self._integrations:
            raise NoIntegration("this orchestrator knows no forge integration", hint=CONFIG_HINT)

    async def _ask(self, integration: Integration, method: str, path: str,
                   params: Mapping[str, str | Sequence[str] | int]) -> httpx.Response:
        what = f"the webhook inbox of {integration.url}"
        try:
            bearer = integration.source.bearer()
            async with httpx.AsyncClient(base_url=integration.url,
                                         timeout=integration.source.timeout,
                                         headers={"Authorization": f"Bearer {bearer}"}) as client:
                response = await client.request(method, path, params=params)
        except httpx.TransportError as exc:
            raise IntegrationUnavailable(f"{what}: no answer ({type(exc).__name__}: {exc})",
                                         hint="is the integration running?") from exc
        except SolsticeError as exc:  # its token_file cannot be read
            raise IntegrationUnavailable(f"{what}: {exc.message}", hint=exc.hint) from exc
        if response.status_code == 404 and method == "POST":
            raise NotParked(error_reason(response) or f"{what}: no such parked delivery")
        if response.status_code != 200:
            raise IntegrationUnavailable(
                f"{what}: HTTP {response.status_code} {error_reason(response)}".rstrip(),
                hint="the orchestrator's checkout_credentials token must equal the "
                     "integration's internal_token" if response.status_code in (401, 404)
                else None)
        return response

    async def _listing(self, integration: Integration, states: Sequence[InboxState],
                       limit: int) -> IntegrationInbox:
        try:
            response = await self._ask(integration, "GET", PATH,
                                       {"state": [s.value for s in states], "limit": limit})
            listing = InboxListing.model_validate_json(response.content)
        except IntegrationUnavailable as exc:
            return IntegrationInbox(integration, None, str(exc))
        except ValidationError:
            return IntegrationInbox(integration, None, f"the webhook inbox of "
                                    f"{integration.url}: malformed answer")
        return IntegrationInbox(integration, listing)

    async def listings(self, states: Sequence[InboxState], limit: int) -> list[IntegrationInbox]:
        """Every integration's inbox (the `limit` oldest deliveries in `states`), asked at
        once; one that does not answer is reported with its error. Raises `NoIntegration`."""
        self._require_any()
        return list(await asyncio.gather(*(self._listing(i, states, limit)
                                           for i in self._integrations)))

    async def retry(self, forge: str, entry_id: int) -> InboxEntry:
        """Put parked delivery `entry_id` of `forge` back to pending, on the integration
        serving `forge`. Raises `NoIntegration`, `NotParked`, `IntegrationUnavailable`."""
        self._require_any()
        source = self._sources.get(forge)
        if source is None:
            raise NoIntegration(f"no integration is configured for forge {forge!r} (configured: "
                                f"{', '.join(sorted(self._sources))})",
                                hint=CONFIG_HINT.replace("<forge>", forge))
        integration = next(i for i in self._integrations if i.url == source.url.rstrip("/"))
        response = await self._ask(integration, "POST", retry_path(entry_id), {"forge": forge})
        try:
            return InboxEntry.model_validate_json(response.content)
        except ValidationError as exc:
            raise IntegrationUnavailable(f"the webhook inbox of {integration.url}: "
                                         "malformed answer") from exc
