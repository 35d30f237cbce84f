"""Redelivery of the webhooks GitHub could not deliver.

GitHub gives up on a delivery that did not get a 2xx answer within 10 s and never tries it
again by itself: a push arriving while the database, the broker or this service was down is
lost unless someone asks for it again. At start and every `redelivery_interval` seconds,
`DeliveryRecovery` lists the App's webhook deliveries of the last `redelivery_lookback`
seconds (`GET /app/hook/deliveries`, as the App) and asks GitHub to redeliver
(`POST /app/hook/deliveries/{id}/attempts`) each event (`guid`) none of whose attempts
succeeded and that is not in the inbox (a delivery stored there arrived, whatever became of
it: the inbox worker retries it). GitHub then sends the same body with the same
`X-GitHub-Delivery`, which the webhook stores as usual.

Once GitHub lists `redelivery_attempts` failed attempts of an event (the first delivery
included), it is not asked for again: one refused for good (a body the webhook rejects) is
not redelivered at every pass.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime

from common.postgres import DATABASE_ERRORS
from github_integration.api import GitHubApi, HookDelivery
from github_integration.errors import GitHubApiError

log = logging.getLogger(__name__)

# Of the guids given, those this service received already (stored in the inbox).
KnownDeliveries = Callable[[Collection[str]], Awaitable[set[str]]]
# More than this many pages is not "recent" any more: the lookback is cut short.
MAX_PAGES = 50
# GitHub makes a redelivery within seconds; one asked for and not listed yet is not asked for
# again (by a pass soon after) until this long has passed.
PENDING_SECONDS = 60.0


class DeliveryRecovery:
    """Asks GitHub to redeliver the failed deliveries it will not retry by itself."""

    def __init__(self, api: GitHubApi, known: KnownDeliveries, *, interval: float,
                 lookback: float, attempts: int, page_size: int = 100,
                 clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._known = known
        self.interval = interval
        self.lookback = lookback
        self.attempts = attempts
        self.page_size = page_size
        self._clock = clock
        self._given_up: set[str] = set()
        # guid -> when a redelivery was asked for, and how many attempts were listed then
        self._asked: dict[str, tuple[float, int]] = {}

    async def run(self) -> None:
        """A pass now, then one every `interval` seconds, for ever (a supervised task). A
        pass GitHub or the database cannot serve is logged and tried again next time."""
        while True:
            try:
                await self.recover()
            except GitHubApiError as exc:
                log.warning("webhook redelivery pass failed: %s", exc)
            except DATABASE_ERRORS as exc:
                log.warning("webhook redelivery pass failed: database unavailable: %s", exc)
            await asyncio.sleep(self.interval)

    async def recover(self) -> list[str]:
        """One pass; the guids of the events GitHub was asked to redeliver."""
        failed = self._failed(await self._recent())
        if not failed:
            return []
        known = await self._known(list(failed))
        asked = []
        for guid, (latest, tried) in failed.items():
            if guid in known:
                continue
            try:
                await self._api.redeliver(latest.id)
            except GitHubApiError as exc:
                if exc.retryable:
                    raise
                # Gone from GitHub's log since it was listed, or too old to redeliver.
                log.warning("GitHub refused to redeliver a webhook: %s", exc,
                            extra={"delivery": guid, "event": latest.event})
                continue
            self._asked[guid] = (self._clock(), tried)
            log.info("asked GitHub to redeliver a webhook it could not deliver",
                     extra={"delivery": guid, "event": latest.event,
                            "status_code": latest.status_code})
            asked.append(guid)
        return asked

    async def _recent(self) -> list[HookDelivery]:
        """The deliveries of the lookback period (pages come newest first)."""
        since = datetime.fromtimestamp(self._clock() - self.lookback, UTC)
        recent: list[HookDelivery] = []
        cursor = None
        for _ in range(MAX_PAGES):
            page, cursor = await self._api.hook_deliveries(cursor=cursor,
                                                          per_page=self.page_size)
            recent += [d for d in page if d.delivered_at >= since]
            if cursor is None or not page or page[-1].delivered_at < since:
                break
        return recent

    def _failed(self, deliveries: list[HookDelivery]) -> dict[str, tuple[HookDelivery, int]]:
        """Per event not delivered yet and not given up on, its latest attempt and how many
        there were."""
        attempts: dict[str, list[HookDelivery]] = {}
        for delivery in deliveries:
            attempts.setdefault(delivery.guid, []).append(delivery)
        # Those out of the lookback are never listed again.
        self._given_up &= attempts.keys()
        self._asked = {g: at for g, at in self._asked.items() if g in attempts}
        failed = {}
        for guid, tried in attempts.items():
            if any(d.succeeded for d in tried) or self._pending(guid, len(tried)):
                continue
            if len(tried) >= self.attempts:
                if guid not in self._given_up:
                    self._given_up.add(guid)
                    log.warning("webhook still not delivered after %d attempts; not asking "
                                "GitHub again (redeliver it from the App's settings once the "
                                "cause is fixed)", len(tried),
                                extra={"delivery": guid, "event": tried[0].event,
                                       "status_code": tried[0].status_code})
                continue
            failed[guid] = (max(tried, key=lambda d: d.delivered_at), len(tried))
        return failed

    def _pending(self, guid: str, tried: int) -> bool:
        """Whether a redelivery asked for is not listed yet (and not given up on)."""
        if guid not in self._asked:
            return False
        asked_at, tried_then = self._asked[guid]
        return tried == tried_then and self._clock() - asked_at < PENDING_SECONDS
