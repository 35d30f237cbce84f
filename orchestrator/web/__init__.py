"""The web pages every orchestrator serves (any host answers for any run: everything is read
from the shared Postgres; logs were masked before they were stored).

- `/` and `/runs`: the run list, newest first, filtered by repository, branch, state, event;
- `/runs/{run_id}`: the run, its metadata and its jobs by stage (from `needs`), live while
  active through `/runs/{run_id}/events`;
- `/jobs/{job_id}`: the job's log by step, live while it runs through the event stream
  `/jobs/{job_id}/events` (`live`); `/jobs/{job_id}/log.txt` the raw log;
- `/jobs/{job_id}/artifacts/{path}`: an artifact's download (ranges, `web_artifacts`);
  `/runs/{run_id}/bundle.tar.gz`: the ended run's record;
- `/badge/{owner}/{repo}.svg`: the status badge, public even behind the token;
- `/healthz` and `/readyz` (`common.health`), unauthenticated.

Unless `web_access = "public"`, every page but the badge, `/healthz` and `/readyz` needs an
admin token or a signed grant to its run (`webauth`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route

from common.health import Check, health_routes
from orchestrator.blobstore import BlobStore
from orchestrator.bundle import ArtifactReader
from orchestrator.db import Database
from orchestrator.web.badge import badge_endpoint
from orchestrator.web.live import POLL_SECONDS, LiveStreams
from orchestrator.web.pages import Pages, Rerun
from orchestrator.web.signals import LiveSignals
from orchestrator.web_artifacts import artifact_routes, bundle_route
from orchestrator.webauth import WebAccess, WebPolicy

__all__ = ["LiveSignals", "build_app"]


def build_app(db: Database, checks: Mapping[str, Check] | None = None, *,
              policy: WebPolicy | None, public_url: str | None = None,
              signals: LiveSignals | None = None, poll: float = POLL_SECONDS,
              extra_routes: Sequence[BaseRoute] = (), blobs: BlobStore | None = None,
              read_artifact: ArtifactReader | None = None, rerun: Rerun | None = None
              ) -> Starlette:
    """The pages' ASGI app over `db`, with `/readyz` running `checks`: behind `policy`
    (`webauth`; None: public); links under the path of `public_url`; live streams woken by
    `signals` (else they poll every `poll` seconds); `extra_routes` (`/metrics`) open, beside
    the badge; artifact downloads from `blobs` and the run's record through `read_artifact`
    (`web_artifacts`); re-run buttons for admin token holders through `rerun`."""
    pages = Pages(db, urlsplit(public_url or "").path.rstrip("/"), blobs, rerun)
    streams = LiveStreams(db, pages, signals or LiveSignals(), poll=poll)
    gate = [] if policy is None else [Middleware(WebAccess, policy=policy)]
    gated = Starlette(routes=[
        Route("/", pages.run_list),
        Route("/runs", pages.run_list),
        Route("/runs/{run_id}", pages.run_page),
        Route("/runs/{run_id}/rerun", pages.rerun_run, methods=["POST"]),
        Route("/runs/{run_id}/events", streams.run_events),
        Route("/jobs/{job_id}", pages.job_page),
        Route("/jobs/{job_id}/events", streams.job_events),
        Route("/jobs/{job_id}/log.txt", pages.job_log),
        *(artifact_routes(db, blobs) if blobs is not None else []),
        *([bundle_route(db, read_artifact)] if read_artifact is not None else []),
        *health_routes(checks or {}),
    ], middleware=gate)
    return Starlette(routes=[
        # Outside the gate: a README's badge is fetched by the forge's image proxy, tokenless.
        Route("/badge/{owner}/{repo}.svg", badge_endpoint(db)),
        *extra_routes,
        Mount("/", app=gated),
    ])
