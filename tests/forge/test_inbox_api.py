"""`GET /internal/inbox` and `POST /internal/inbox/{id}/retry` of the forge integration (the
protocol `ciadm inbox` reaches the inbox by, `common/forge/inbox_api.py`), over real HTTP on
real PostgreSQL."""
from __future__ import annotations

import asyncpg
from pydantic import SecretStr

from common.broker import MemoryBroker
from common.forge.inbox import Inbox, InboxState, Received
from common.forge.inbox_api import PATH, InboxListing, retry_path
from tests.fakes.forgejo_api import FakeForgejo
from tests.forge.conftest import make_config, service_with
from tests.forge.test_inbox_cli import park

INTERNAL = "internal-token-0123456789"
BEARER = {"Authorization": f"Bearer {INTERNAL}"}


async def test_lists_and_retries_behind_the_internal_token(
        forge: FakeForgejo, pool: asyncpg.Pool, broker: MemoryBroker) -> None:
    inbox = Inbox(pool)
    parked = await park(inbox, Received("gitea", "d-parked", "push", b"{}"), "HTTP 502")
    github = await park(inbox, Received("github", "d-gh", "push", b"{}"), "not installed")
    await inbox.store(Received("forgejo", "d-ignored", "create", b"{}"), InboxState.IGNORED, "x")
    config = make_config(forge, internal_token=SecretStr(INTERNAL))
    async with service_with(config, forge, pool, broker) as h:
        listed = await h.http.get(PATH, headers=BEARER)
        assert listed.status_code == 200, listed.text
        listing = InboxListing.model_validate(listed.json())
        assert listing.forges == ["forgejo", "gitea"]  # not GitHub's deliveries
        assert listing.counts[InboxState.PARKED] == 1 and listing.counts[InboxState.IGNORED] == 1
        assert [(e.id, e.state, e.last_error) for e in listing.entries] == [
            (parked, InboxState.PARKED, "HTTP 502")]
        every = await h.http.get(PATH, headers=BEARER,
                                 params={"state": ["ignored", "parked"], "limit": 1})
        assert [e["delivery_id"] for e in every.json()["entries"]] == ["d-parked"]

        for params in ({"state": "lost"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "x"}):
            refused = await h.http.get(PATH, headers=BEARER, params=params)
            assert refused.status_code == 400 and refused.json()["error"], params
        for headers in ({}, {"Authorization": "Bearer not-it"}):
            assert (await h.http.get(PATH, headers=headers)).status_code == 401
            assert (await h.http.post(retry_path(parked), headers=headers)).status_code == 401

        # Another integration's delivery, and this one's under another forge, are not found.
        assert (await h.http.post(retry_path(github), headers=BEARER)).status_code == 404
        wrong_forge = await h.http.post(retry_path(parked), headers=BEARER,
                                        params={"forge": "forgejo"})
        assert wrong_forge.status_code == 404 and "no parked delivery" in wrong_forge.text
        retried = await h.http.post(retry_path(parked), headers=BEARER, params={"forge": "gitea"})
        assert retried.status_code == 200, retried.text
        assert (retried.json()["state"], retried.json()["attempts"]) == ("pending", 0)


async def test_not_served_without_an_internal_token(forge: FakeForgejo, pool: asyncpg.Pool,
                                                    broker: MemoryBroker) -> None:
    async with service_with(make_config(forge), forge, pool, broker) as h:
        response = await h.http.get(PATH, headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404 and "no internal_token" in response.json()["error"]

