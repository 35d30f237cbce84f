"""Prometheus metrics at `GET /metrics` on every service (`docs/metrics.md` lists them).

Counters and histograms are updated where things happen (the executor, the Runner service,
the webhook edge). Gauges that describe shared state (the queue, jobs by state, backlogs) are
read from PostgreSQL when scraped: each service passes its `Refresher`s to `metrics_route`,
which runs them (each bounded by `REFRESH_TIMEOUT`) before rendering. A refresher that fails
leaves its gauges as they were and is logged; the scrape still answers.

`/metrics` is unauthenticated like `/healthz`: it shows counts, labels and host names, never
a run's content.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

Refresher = Callable[[], Awaitable[None]]
REFRESH_TIMEOUT = 2.0
# Seconds: a boot or provisioning takes seconds to minutes, a job up to hours.
SHORT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

# -- the orchestrator --------------------------------------------------------------------------
QUEUE_DEPTH = Gauge("solstice_queue_depth", "Jobs released to the queue and waiting for a host, "
                    "per runs_on label (cluster-wide, from the database)", ["label"])
QUEUE_OLDEST_WAIT = Gauge("solstice_queue_oldest_wait_seconds", "How long the oldest waiting job "
                          "of a label has waited (cluster-wide)", ["label"])
JOBS = Gauge("solstice_jobs", "Jobs not yet ended, by state (cluster-wide)", ["state"])
JOBS_FINISHED = Counter("solstice_jobs_finished", "Jobs this host ended, by final state and "
                        "runs_on label", ["state", "label"])
JOB_DURATION = Histogram("solstice_job_duration_seconds", "From lease to recorded result, per "
                         "job attempt this host ran", ["label", "backend"], buckets=JOB_BUCKETS)
PROVISION_DURATION = Histogram("solstice_job_provision_seconds", "Creating a job's machine "
                               "(backend provision)", ["label", "backend"], buckets=SHORT_BUCKETS)
BOOT_DURATION = Histogram("solstice_job_boot_seconds", "From starting a job's machine to its "
                          "runner calling in (GetJob)", ["label", "backend"], buckets=SHORT_BUCKETS)
RUNNER_LOG_LINES = Counter("solstice_runner_log_lines", "Log lines received from runners",
                           ["label"])
RUNNER_LOG_BYTES = Counter("solstice_runner_log_bytes", "Log bytes received from runners",
                           ["label"])
HOST_CAPACITY = Gauge("solstice_host_capacity", "Job slots of this host per runs_on label "
                      "(0 while drained)", ["host", "label"])
HOST_RUNNING = Gauge("solstice_host_running_jobs", "Jobs this host runs now per label",
                     ["host", "label"])

# -- every service -----------------------------------------------------------------------------
OUTBOX_BACKLOG = Gauge("solstice_outbox_backlog", "Outbox rows not yet sent: the orchestrator's "
                       "messages to publish, an integration's statuses to deliver", ["outbox"])
INBOX_BACKLOG = Gauge("solstice_inbox_backlog", "Inbox rows (webhook deliveries stored) not yet "
                      "processed", ["inbox"])
INBOX_PARKED = Gauge("solstice_inbox_parked", "Inbox rows parked after failing for good or too "
                     "often: each waits for an operator's `inbox --retry ID`", ["inbox"])

# -- the integrations' webhook edge --------------------------------------------------------
WEBHOOKS = Counter("solstice_webhooks", "Webhook deliveries answered, by forge, event and "
                   "outcome (published, ignored, duplicate, ... or http_<status>)",
                   ["forge", "event", "outcome"])
# Headers naming the event, by forge (the path's last segment).
EVENT_HEADERS = {"github": "x-github-event", "forgejo": "x-forgejo-event", "gitea": "x-gitea-event"}
WEBHOOK_PREFIX = "/webhooks/"
# The event label takes only names the forges document (anyone can send any header, and each
# label value costs memory for good); others count as `other`.
KNOWN_EVENTS = frozenset({
    "push", "create", "delete", "ping", "pull_request", "pull_request_sync",
    "pull_request_target", "pull_request_review", "pull_request_comment", "issues",
    "issue_comment", "release", "repository", "fork", "check_run", "check_suite",
    "installation", "installation_repositories", "workflow_run", "status"})
MAX_OUTCOME_BODY = 64 * 1024


def inbox_backlog(inbox: str, count: Callable[[], Awaitable[Mapping[str, int]]]) -> Refresher:
    """A refresher setting `solstice_inbox_backlog{inbox=...}` and `solstice_inbox_parked`
    to the `pending` and `parked` counts that `count` answers."""
    async def refresh() -> None:
        counts = await count()
        INBOX_BACKLOG.labels(inbox).set(counts.get("pending", 0))
        INBOX_PARKED.labels(inbox).set(counts.get("parked", 0))
    return refresh


def outbox_backlog(outbox: str, count: Callable[[], Awaitable[int]]) -> Refresher:
    """A refresher setting `solstice_outbox_backlog{outbox=...}` to what `count` answers."""
    async def refresh() -> None:
        OUTBOX_BACKLOG.labels(outbox).set(await count())
    return refresh


async def _refresh(refresher: Refresher) -> None:
    try:
        async with asyncio.timeout(REFRESH_TIMEOUT):
            await refresher()
    except Exception as exc:  # a scrape must answer even while the database is away
        log.warning("metrics refresh failed; its gauges keep their last values",
                    extra={"refresher": getattr(refresher, "__qualname__", "?"),
                           "error": f"{type(exc).__name__}: {exc}"})


def metrics_route(refreshers: Sequence[Refresher] = ()) -> Route:
    """`GET /metrics` in Prometheus' text format, after running `refreshers`."""
    async def metrics(request: Request) -> Response:
        await asyncio.gather(*(_refresh(r) for r in refreshers))
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
    return Route("/metrics", metrics, methods=["GET"])


class WebhookOutcomes:
    """ASGI middleware counting `POST /webhooks/<forge>` answers in `solstice_webhooks`: the
    `outcome` of a handled delivery's JSON answer, else `http_<status>`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(WEBHOOK_PREFIX):
            await self.app(scope, receive, send)
            return
        forge = path[len(WEBHOOK_PREFIX):].strip("/")
        if forge not in EVENT_HEADERS:
            await self.app(scope, receive, send)
            return
        header = EVENT_HEADERS[forge].encode()
        given = next((v.decode(errors="replace") for k, v in scope.get("headers", [])
                      if k == header), "")
        event = given if given in KNOWN_EVENTS else "other" if given else "-"
        status = 0
        body = bytearray()

        async def counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(body) < MAX_OUTCOME_BODY:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        except Exception:
            WEBHOOKS.labels(forge, event, "http_500").inc()
            raise
        WEBHOOKS.labels(forge, event, _outcome(status, bytes(body))).inc()


def _outcome(status: int, body: bytes) -> str:
    if 200 <= status < 300:
        try:
            outcome = json.loads(body).get("outcome")
        except (ValueError, AttributeError):
            outcome = None
        if isinstance(outcome, str) and outcome:
            return outcome
    return f"http_{status}"
