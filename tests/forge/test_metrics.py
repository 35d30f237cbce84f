"""The integration's `/metrics`: webhook outcomes by forge and event as deliveries arrive,
and the status outbox backlog."""
from __future__ import annotations

import json

import asyncpg
import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.forge.errors import WebhookRejected
from common.forge.webhook import answer, webhook_app
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


async def test_the_webhook_short_way_keeps_the_answers_and_counts_of_the_long_one() -> None:
    """A webhook POST skips Starlette's stack (`WebhookEdge`): its handled errors, its outcome
    count and the answers to other methods must be those the stack gave."""
    async def endpoint(request: Request) -> Response:
        kind = request.headers.get("x-forgejo-event")
        if kind == "refused":
            raise WebhookRejected(400, "body is not valid JSON")
        if kind == "database":
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        if kind == "bug":
            raise RuntimeError("a bug")
        return answer("accepted", status=202)

    app = webhook_app([Route("/webhooks/forgejo", endpoint, methods=["POST"])])
    async with running(app) as url, httpx.AsyncClient(base_url=url) as http:
        before = await scrape(url)

        async def post(event: str) -> httpx.Response:
            return await http.post("/webhooks/forgejo", headers={"X-Forgejo-Event": event})
        assert (await post("push")).json()["outcome"] == "accepted"
        refused = await post("refused")
        assert (refused.status_code, refused.json()["error"]) == (400, "body is not valid JSON")
        down = await post("database")
        assert down.status_code == 503 and down.json()["error"].startswith("database unavailable")
        assert (await post("bug")).status_code == 500
        assert (await http.get("/webhooks/forgejo")).status_code == 405
        assert (await http.post("/webhooks/nowhere")).status_code == 404
        after = await scrape(url)

    def grew(outcome: str, event: str) -> float:
        return (value(after, "solstice_webhooks_total", forge="forgejo", event=event,
                      outcome=outcome)
                - value(before, "solstice_webhooks_total", forge="forgejo", event=event,
                        outcome=outcome))
    assert grew("accepted", "push") == 1
    assert grew("http_400", "other") == grew("http_503", "other") == 1
    assert grew("http_500", "other") == 1
    assert grew("http_405", "-") == 1
