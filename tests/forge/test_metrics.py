"""The integration's `/metrics`: webhook outcomes by forge and event as deliveries arrive,
and the status outbox backlog."""
from __future__ import annotations

import json

from common.forge.webhook import webhook_app
from common.http import running
from common.metrics import inbox_backlog
from tests.forge.conftest import FIXTURES, Harness
from tests.metrics import scrape, value

PUSH = json.loads((FIXTURES / "forgejo" / "HookPush.json").read_text())


async def test_webhook_outcomes_and_outbox_backlog(harness: Harness) -> None:
    base = str(harness.http.base_url)
    before = await scrape(base)
    assert (await harness.post(PUSH, "push", delivery="m-1")).status_code == 202
    assert (await harness.post(PUSH, "push", delivery="m-1")).status_code == 200
    assert (await harness.post(PUSH, "push", secret="wrong")).status_code == 401
    assert (await harness.post(PUSH, "made-up-event", secret="wrong")).status_code == 401
    after = await scrape(base)

    def grew(**labels: str) -> float:
        return (value(after, "solstice_webhooks_total", **labels)
                - value(before, "solstice_webhooks_total", **labels))

    assert grew(forge="forgejo", event="push", outcome="accepted") == 1
    assert grew(forge="forgejo", event="push", outcome="duplicate") == 1
    assert grew(forge="forgejo", event="push", outcome="http_401") == 1
    # Anyone can send any event name: unknown ones share one label value.
    assert grew(forge="forgejo", event="other", outcome="http_401") == 1
    assert value(after, "solstice_outbox_backlog", outbox="forgejo") == 0


async def test_an_inbox_feeds_its_backlog_and_parked_gauges() -> None:
    """The gauges an integration's inbox feeds: counted when scraped, through the shared edge."""
    counts = {"pending": 3, "parked": 1, "done": 40}

    async def count() -> dict[str, int]:
        return counts

    app = webhook_app([], metrics=[inbox_backlog("forgejo", count)])
    async with running(app) as url:
        scraped = await scrape(url)
        assert value(scraped, "solstice_inbox_backlog", inbox="forgejo") == 3
        assert value(scraped, "solstice_inbox_parked", inbox="forgejo") == 1
        counts.update(pending=0, parked=0)
        scraped = await scrape(url)
        assert value(scraped, "solstice_inbox_backlog", inbox="forgejo") == 0
        assert value(scraped, "solstice_inbox_parked", inbox="forgejo") == 0
