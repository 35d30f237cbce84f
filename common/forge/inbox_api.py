"""The webhook inbox over HTTP, for orchestrators (`ciadm inbox`): how it is asked for.

An integration's database may not be the orchestrators' (docs/config.md), so an orchestrator
does not read `forge_inbox` itself: it asks each integration it knows (its
`[orchestrator.checkout_credentials.<forge>]` tables) with the integration's internal token
(`common.forge.internal`):

    GET /internal/inbox?state=pending&state=parked&limit=100
    Authorization: Bearer <the integration's internal_token>

answered 200 with an `InboxListing`: the forges the integration serves, its deliveries per
state (every state present), and the oldest `limit` (1 to MAX_LIMIT, default DEFAULT_LIMIT)
deliveries in the `state`s asked for (repeatable; default pending and parked, the backlog), as
`InboxEntry.as_dict()`. 400 for an unknown state or a bad limit.

    POST /internal/inbox/{id}/retry?forge=forgejo   (same bearer)

puts parked delivery `id` back to pending, due now, its attempts reset (what the
integration's `inbox --retry ID` does), and answers 200 with the `InboxEntry` as it is
now; 404 when the integration has no parked delivery `id` (of `forge`, when given). Both
answer 401 for a missing or wrong bearer, 404 when the integration has no `internal_token`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.forge.errors import WebhookRejected
from common.forge.inbox import Inbox, InboxEntry, InboxState
from common.forge.internal import authorize, expected_token

log = logging.getLogger(__name__)

PATH = "/internal/inbox"
RETRY_PATH = PATH + "/{id:int}/retry"
SERVED = "the webhook inbox"
BACKLOG = (InboxState.PENDING, InboxState.PARKED)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def retry_path(entry_id: int) -> str:
    """The retry route of delivery `entry_id`."""
    return f"{PATH}/{entry_id}/retry"


class InboxListing(BaseModel):
    """An integration's inbox: its forges, deliveries per state, and the deliveries asked for."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    forges: list[str]
    counts: dict[InboxState, int]
    entries: list[InboxEntry]


def _states(request: Request) -> tuple[InboxState, ...]:
    given = request.query_params.getlist("state")
    try:
        return tuple(InboxState(state) for state in given) or BACKLOG
    except ValueError as exc:
        raise WebhookRejected(400, f"unknown state in {given}; the states are "
                                   f"{', '.join(s.value for s in InboxState)}") from exc


def _limit(request: Request) -> int:
    given = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not given.isdigit() or not 1 <= int(given) <= MAX_LIMIT:
        raise WebhookRejected(400, f"limit {given!r}: give a whole number from 1 to {MAX_LIMIT}")
    return int(given)


def inbox_routes(token: SecretStr | None, inbox: Inbox, forges: Sequence[str]) -> list[Route]:
    """`GET /internal/inbox` and `POST /internal/inbox/{id}/retry` on the deliveries of
    `forges` in `inbox` (see the module docstring), behind the internal `token`."""
    expected = expected_token(token)
    served = tuple(forges)

    async def list_endpoint(request: Request) -> Response:
        authorize(request, expected, SERVED)
        states, limit = _states(request), _limit(request)
        counts = await inbox.counts(served)
        entries = await inbox.entries(served, states, limit=limit)
        listing = InboxListing(forges=list(served),
                               counts={s: counts.get(s.value, 0) for s in InboxState},
                               entries=list(entries))
        return JSONResponse(listing.model_dump(mode="json"))

    async def retry_endpoint(request: Request) -> Response:
        authorize(request, expected, SERVED)
        entry_id: int = request.path_params["id"]
        forge = request.query_params.get("forge")
        entry = await inbox.retry(served if forge is None else [f for f in served if f == forge],
                                  entry_id)
        if entry is None:
            raise WebhookRejected(404, f"no parked delivery {entry_id} of "
                                       f"{forge or ', '.join(served)} in the inbox",
                                  hint="`ciadm inbox --parked` lists the parked deliveries")
        log.info("parked delivery put back by an orchestrator", extra={
            "forge": entry.forge, "delivery": entry.delivery_id, "id": entry.id})
        return JSONResponse(entry.as_dict())

    return [Route(PATH, list_endpoint, methods=["GET"]),
            Route(RETRY_PATH, retry_endpoint, methods=["POST"])]
