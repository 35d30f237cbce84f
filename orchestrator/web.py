"""Web log pages: what a forge's status / check run links to (`JobEvent.log_url`).

- `/runs/{run_id}`: the run, its jobs and steps;
- `/jobs/{job_id}`: the job's steps and log, following live while the job runs;
- `/jobs/{job_id}/log.txt?after=SEQ`: the log as plain text after a sequence number, with
  `X-Solstice-Last-Seq` and `X-Solstice-Done` headers (the page polls it);
- `/jobs/{job_id}/artifacts/{path}`: an artifact's download (`web_artifacts`);
- `/healthz` and `/readyz` (`common.health`), unauthenticated.

Runs and jobs are named by their full id; a unique prefix of at least 8 characters (what
`ciadm` accepts too) redirects to the full id. Read-only, from the shared Postgres, so any host
serves every job. Logs were masked before they were stored. Unless `web_access = "public"`,
every page but `/healthz` and `/readyz` needs the admin token (`webauth`).
"""
from __future__ import annotations

import html
import re
import uuid
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from common.health import Check, health_routes
from orchestrator.api import JobSummary, RunSummary, load_summary
from orchestrator.blobstore import BlobStore
from orchestrator.db import Database
from orchestrator.logarchive import LogGone, LogUnavailable
from orchestrator.logstore import read_log
from orchestrator.validate import INT64_MAX
from orchestrator.web_artifacts import artifact_routes, artifacts_section
from orchestrator.webauth import WebTokenRequired

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; } td, th { padding: .2rem .8rem; text-align: left; }
pre { background: #111; color: #ddd; padding: 1rem; overflow-x: auto; white-space: pre-wrap; }
.success { color: #1a7f37; } .failure, .error, .timed_out { color: #cf222e; }
.running, .provisioning, .queued, .awaiting_approval { color: #9a6700; }
.skipped, .cancelled { color: #6e7781; }
"""

FOLLOW_SCRIPT = """
<script>
let after = %(last)d;
const log = document.getElementById("log");
async function poll() {
  const r = await fetch("log.txt?after=" + after, {cache: "no-store"});
  if (!r.ok) return setTimeout(poll, 2000);
  log.textContent += await r.text();
  after = parseInt(r.headers.get("X-Solstice-Last-Seq") || after);
  if (r.headers.get("X-Solstice-Done") === "1") location.reload();
  else setTimeout(poll, 1000);
}
setTimeout(poll, 1000);
</script>
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>"
                        f"{html.escape(title)}</title><style>{STYLE}</style></head>"
                        f"<body>{body}</body></html>")


def _state(state: str) -> str:
    return f"<span class='{html.escape(state)}'>{html.escape(state)}</span>"


MIN_PREFIX = 8
# Only what a UUID's text is made of: the prefix goes into a LIKE pattern.
PREFIX_RE = re.compile(rf"[0-9a-f-]{{{MIN_PREFIX},36}}")


def _uuid(request: Request, name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        return None


def _not_found(what: str) -> Response:
    return PlainTextResponse(f"no such {what}: give its full id, or at least {MIN_PREFIX} "
                             "characters of it", status_code=404)


async def _prefix_redirect(db: Database, request: Request, table: str, name: str,
                           then: str) -> Response:
    """The answer for an id that is not a full UUID: a redirect to the one run or job whose
    id starts with it, else 404. `then` is what follows the id in the URL (`""`, `/log.txt`)."""
    what = table[:-1]
    prefix = request.path_params[name].lower()
    if not PREFIX_RE.fullmatch(prefix):
        return _not_found(what)
    rows = await db.pool.fetch(f"SELECT id FROM {table} WHERE id::text LIKE $1 || '%' LIMIT 2",
                               prefix)
    if len(rows) > 1:
        return PlainTextResponse(f"{prefix} is the start of more than one {what}'s id; give "
                                 "more of it", status_code=404)
    if not rows:
        return _not_found(what)
    # Relative, so the redirect holds behind a proxy that serves the pages under a path.
    location = f"{rows[0]['id']}" if not then else f"../{rows[0]['id']}{then}"
    if request.url.query:
        location += f"?{request.url.query}"
    return RedirectResponse(location, status_code=307)


def _log_unavailable(exc: LogUnavailable) -> Response:
    return PlainTextResponse(f"{exc.message} ({exc.hint})",
                             status_code=410 if isinstance(exc, LogGone) else 503)


def _steps_table(job: JobSummary) -> str:
    rows = "".join(
        f"<tr><td>{s.index + 1}</td><td>{html.escape(s.name)}</td><td>{_state(s.state)}</td>"
        f"<td>{'' if s.exit_code is None else s.exit_code}</td>"
        f"<td>{'' if s.duration_ms is None else f'{s.duration_ms / 1000:.1f}s'}</td></tr>"
        for s in job.steps)
    return ("<table><tr><th>#</th><th>step</th><th>state</th><th>exit</th><th>took</th></tr>"
            f"{rows}</table>")


def build_app(db: Database, checks: Mapping[str, Check] | None = None, *, token: str | None,
              secure_cookie: bool = False, blobs: BlobStore | None = None) -> Starlette:
    """The pages' ASGI app over `db`, with `/readyz` running `checks`: behind `token` (None:
    public); `secure_cookie` when users reach the pages over HTTPS; artifact downloads from
    `blobs` (`web_artifacts`)."""

    async def run_page(request: Request) -> Response:
        run_id = _uuid(request, "run_id")
        if run_id is None:
            return await _prefix_redirect(db, request, "runs", "run_id", "")
        summary: RunSummary | None = await load_summary(db, run_id)
        if summary is None:
            return _not_found("run")
        rows = "".join(
            f"<tr><td><a href='../jobs/{j.job_id}'>{html.escape(j.key)}</a></td>"
            f"<td>{html.escape(j.runs_on)}</td><td>{_state(j.state.value)}</td>"
            f"<td>{html.escape(j.message)}</td></tr>" for j in summary.jobs)
        return _page(f"run {summary.run_id}",
                     f"<h1>{html.escape(summary.workflow_name or 'run')} {_state(summary.state)}</h1>"
                     f"<pre>{html.escape(summary.message)}</pre><table><tr><th>job</th>"
                     f"<th>runs on</th><th>state</th><th></th></tr>{rows}</table>"
                     f"{await artifacts_section(db, summary.run_id)}")

    async def job_page(request: Request) -> Response:
        job_id = _uuid(request, "job_id")
        if job_id is None:
            return await _prefix_redirect(db, request, "jobs", "job_id", "")
        run_id = await db.pool.fetchval("SELECT run_id FROM jobs WHERE id = $1", job_id)
        summary = await load_summary(db, run_id) if run_id else None
        try:
            log = await read_log(db, blobs, job_id)
        except LogUnavailable as exc:
            return _log_unavailable(exc)
        if summary is None or log is None:
            return _not_found("job")
        job = next(j for j in summary.jobs if j.job_id == job_id)
        text = b"".join(c.data for c in log.chunks).decode(errors="replace")
        follow = "" if log.done else FOLLOW_SCRIPT % {"last": log.last_seq or 0}
        return _page(f"{job.key} {job.state.value}",
                     f"<p><a href='../runs/{summary.run_id}'>run {summary.run_id}</a></p>"
                     f"<h1>{html.escape(job.key)} {_state(job.state.value)}</h1>"
                     f"<p>{html.escape(job.message)} (attempt {job.attempt})</p>"
                     f"{_steps_table(job)}<pre id='log'>{html.escape(text)}</pre>{follow}")

    async def job_log(request: Request) -> Response:
        job_id = _uuid(request, "job_id")
        if job_id is None:
            return await _prefix_redirect(db, request, "jobs", "job_id", "/log.txt")
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            after = -1
        # Sequence numbers are bigint: anything outside would overflow the query.
        if not 0 <= after <= INT64_MAX:
            return PlainTextResponse(f"`after` must be a whole number from 0 to {INT64_MAX}",
                                     status_code=400)
        try:
            log = await read_log(db, blobs, job_id, after_seq=after) if job_id else None
        except LogUnavailable as exc:
            return _log_unavailable(exc)
        if log is None:
            return _not_found("job")
        body = b"".join(c.data for c in log.chunks)
        return Response(body, media_type="text/plain; charset=utf-8", headers={
            "X-Solstice-Last-Seq": str(log.last_seq or after),
            "X-Solstice-Done": "1" if log.done else "0"})

    gate = [] if token is None else [
        Middleware(WebTokenRequired, token=token, secure_cookie=secure_cookie)]
    return Starlette(routes=[
        Route("/runs/{run_id}", run_page),
        Route("/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/log.txt", job_log),
        *(artifact_routes(db, blobs) if blobs is not None else []),
        *health_routes(checks or {}),
    ], middleware=gate)

