"""The HTML pages and the raw log: what people open, and what forge statuses link to.

Runs and jobs are named by their full id; a unique prefix of at least 8 characters (what
`ciadm` accepts too) redirects to the full id. Links are absolute paths under `base` (the
path of `public_url`), so they resolve the same from every page.
"""
from __future__ import annotations

import html
import re
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from orchestrator.api import RUN_STATES, JobSummary, StepSummary
from orchestrator.blobstore import BlobStore
from orchestrator.db import Database
from orchestrator.logarchive import LogGone, LogUnavailable
from orchestrator.logstore import read_log
from orchestrator.steering import RerunRefused
from orchestrator.validate import INT64_MAX, NO_STEP
from orchestrator.web import templates as t
from orchestrator.web.ansi import to_html
from orchestrator.web.data import FILTERS, RunDetail, RunRow, list_runs, run_detail
from orchestrator.web_artifacts import artifacts_section
from orchestrator.webauth import ADMIN_STATE

MIN_PREFIX = 8
# Only what a UUID's text is made of: the prefix goes into a LIKE pattern.
PREFIX_RE = re.compile(rf"[0-9a-f-]{{{MIN_PREFIX},36}}")
EVENTS = ("push", "pull_request", "tag", "manual")
SETUP_NAME = "setup"  # the runner's own lines (checkout, artifacts): step index NO_STEP


def path_uuid(request: Request, name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        return None


def not_found(what: str) -> Response:
    return PlainTextResponse(f"no such {what}: give its full id, or at least {MIN_PREFIX} "
                             "characters of it", status_code=404)


async def prefix_redirect(db: Database, request: Request, table: str, name: str,
                          then: str) -> Response:
    """The answer for an id that is not a full UUID: a redirect to the one run or job whose
    id starts with it, else 404. `then` is what follows the id in the URL (`""`, `/log.txt`)."""
    what = table[:-1]
    prefix = request.path_params[name].lower()
    if not PREFIX_RE.fullmatch(prefix):
        return not_found(what)
    rows = await db.pool.fetch(f"SELECT id FROM {table} WHERE id::text LIKE $1 || '%' LIMIT 2",
                               prefix)
    if len(rows) > 1:
        return PlainTextResponse(f"{prefix} is the start of more than one {what}'s id; give "
                                 "more of it", status_code=404)
    if not rows:
        return not_found(what)
    # Relative, so the redirect holds behind a proxy that serves the pages under a path.
    location = f"{rows[0]['id']}" if not then else f"../{rows[0]['id']}{then}"
    if request.url.query:
        location += f"?{request.url.query}"
    return RedirectResponse(location, status_code=307)


def _commit(row: RunRow) -> str:
    return t.link(row.commit_url, row.commit_sha[:10])


def _trigger(row: RunRow) -> str:
    if row.pull_request is not None:
        return f"{html.escape(row.event)} {t.link(row.pull_request_url, f'#{row.pull_request}')}"
    return html.escape(row.event)


Rerun = Callable[[uuid.UUID, bool, str], Awaitable[object]]


def admin_of(request: Request) -> str | None:
    """The admin token the visitor holds (`webauth`), None for a grant or public pages."""
    return getattr(request.state, ADMIN_STATE, None)


def log_unavailable(exc: LogUnavailable) -> Response:
    """A compacted log that cannot be read: gone (410) or its store unreachable (503)."""
    return PlainTextResponse(f"{exc.message} ({exc.hint})",
                             status_code=410 if isinstance(exc, LogGone) else 503)


class Pages:
    """The page endpoints over `db` (and `blobs`, where compacted logs are); `base` is the
    path every link starts with."""

    def __init__(self, db: Database, base: str, blobs: BlobStore | None = None,
                 rerun: Rerun | None = None) -> None:
        self.db = db
        self.blobs = blobs
        # (run, failed only, actor) -> a new attempt of its jobs (`OrchestratorAPI.rerun`).
        self.rerun = rerun
        self.base = html.escape(base)  # escaped once: it goes into attributes as it is

    # -- the run list ------------------------------------------------------------------

    async def run_list(self, request: Request) -> Response:
        filters = {name: request.query_params[name] for name in FILTERS
                   if request.query_params.get(name)}
        before = None
        if request.query_params.get("before"):
            try:
                before = uuid.UUID(request.query_params["before"])
            except ValueError:
                return PlainTextResponse("`before` must be a run id (the list's next-page link)",
                                         status_code=400)
        runs = await list_runs(self.db, filters, before=before)
        rows = "".join(
            f"<tr><td>{html.escape(r.repository)}</td><td>{html.escape(r.ref)}</td>"
            f"<td>{_commit(r)}</td><td>{_trigger(r)}</td>"
            f"<td><a href='{self.base}/runs/{r.run_id}'>{t.state(r.state)}</a></td>"
            f"<td>{t.between(r.created_at, r.finished_at)}</td><td>{t.age(r.created_at)}</td></tr>"
            for r in runs.rows) or "<tr><td colspan=7>no runs match</td></tr>"
        older = ""
        if runs.older is not None:
            older = (f"<p><a rel='next' href='{self.base}/?"
                     f"{html.escape(urlencode({**filters, 'before': runs.older}))}'>older runs</a></p>")
        return t.page("runs", f"<h1>Runs</h1>{self._filters(filters)}<div class='scroll'>"
                      "<table id='runs'><tr><th>repository</th><th>ref</th><th>commit</th>"
                      "<th>trigger</th><th>state</th><th>duration</th><th>age</th></tr>"
                      f"{rows}</table></div>{older}", base=self.base)

    def _filters(self, filters: dict[str, str]) -> str:
        def text(name: str) -> str:
            value = html.escape(filters.get(name, ""))
            return f"<input name='{name}' placeholder='{name}' value='{value}'>"

        def choice(name: str, options: tuple[str, ...]) -> str:
            chosen = filters.get(name)
            items = "".join(f"<option{' selected' if o == chosen else ''}>{o}</option>"
                            for o in options)
            return f"<select name='{name}'><option value=''>any {name}</option>{items}</select>"

        return (f"<form class='filters' method='get' action='{self.base}/'>{text('repository')}"
                f"{text('branch')}{choice('state', RUN_STATES)}{choice('event', EVENTS)}"
                "<button>filter</button></form>")

    # -- the run page ------------------------------------------------------------------

    async def run_page(self, request: Request) -> Response:
        run_id = path_uuid(request, "run_id")
        if run_id is None:
            return await prefix_redirect(self.db, request, "runs", "run_id", "")
        detail = await run_detail(self.db, run_id)
        if detail is None:
            return not_found("run")
        row = detail.row
        title = f"{row.repository} {detail.summary.workflow_name or 'run'}"
        live = "" if detail.summary.final else t.RUN_SCRIPT
        return t.page(title, f"<h1>{html.escape(title)}</h1>{self._rerun_form(request, detail)}"
                      f"<div id='run' data-events='{self.base}/runs/{run_id}/events'>"
                      f"{self.run_live_part(detail)}</div>", base=self.base, script=live)

    def _rerun_form(self, request: Request, detail: RunDetail) -> str:
        """Re-run buttons for an ended run, to admin token holders only (a grant reads)."""
        if self.rerun is None or not detail.summary.final or not admin_of(request):
            return ""
        return (f"<form class='rerun' method='post' action='{self.base}/runs/"
                f"{detail.summary.run_id}/rerun'><button name='failed' value='1'>re-run failed "
                "jobs</button> <button name='failed' value='0'>re-run all jobs</button></form>")

    async def rerun_run(self, request: Request) -> Response:
        """`POST /runs/RUN/rerun` (`failed=1`: only the jobs that did not succeed), from the
        run page's buttons: admin token holders only, same origin only."""
        run_id = path_uuid(request, "run_id")
        admin = admin_of(request)
        if self.rerun is None or admin is None:
            return PlainTextResponse("re-running a run needs an admin token (open the page with "
                                     "?token=TOKEN once)\n", status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.url.netloc:
            return PlainTextResponse("cross-site request refused\n", status_code=403)
        if run_id is None:
            return not_found("run")
        form = parse_qs((await request.body()).decode(errors="replace"))
        try:
            await self.rerun(run_id, form.get("failed") == ["1"], f"token:{admin}")
        except RerunRefused as exc:
            return PlainTextResponse(f"{exc}\n", status_code=409)
        except LookupError:
            return not_found("run")
        return RedirectResponse(f"{self.base}/runs/{run_id}", status_code=303)

    def run_live_part(self, detail: RunDetail) -> str:
        """The part of the run page that changes while the run is active (sent again by its
        event stream)."""
        row, summary = detail.row, detail.summary
        meta = [
            ("state", t.state(summary.state) + (f" {html.escape(summary.message)}"
                                                if summary.message else "")),
            ("repository", t.link(row.repo_url, row.repository)),
            ("commit", _commit(row)),
            ("ref", html.escape(row.ref)),
            ("branch", html.escape(row.branch or "")),
            ("tag", html.escape(detail.tag or "")),
            ("pull request", t.link(row.pull_request_url, f"#{row.pull_request}")
             + (f" into {html.escape(detail.base_branch)}" if detail.base_branch else "")
             if row.pull_request is not None else ""),
            ("event", html.escape(row.event)),
            ("sender", html.escape(detail.sender or "")),
            ("workflow", html.escape(detail.workflow_path)),
            ("trust", "trusted (secrets available)" if detail.trusted
             else "untrusted (no secrets)"),
            ("approval", self._approval(detail)),
            ("cancelled", f"by {html.escape(summary.cancelled_by)} at "
                          f"{t.timestamp(summary.cancelled_at)}" if summary.cancelled_by else ""),
            ("gate", self._gate(detail)),
            ("created", t.timestamp(summary.created_at)),
            ("finished", t.timestamp(summary.finished_at)),
            ("duration", t.between(summary.created_at, summary.finished_at)),
        ]
        items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in meta if value)
        columns = "".join(
            f"<div class='column'><h3>stage {depth + 1}</h3>"
            + "".join(self._job_card(detail, job) for job in jobs) + "</div>"
            for depth, jobs in enumerate(detail.depths()))
        return (f"<dl class='meta'>{items}</dl><h2>Jobs</h2>"
                f"<div class='dag' id='dag'>{columns}</div>"
                + artifacts_section(detail.artifacts, self.base, summary.run_id, summary.final))

    @staticmethod
    def _approval(detail: RunDetail) -> str:
        if detail.approved_by:
            return (f"approved by {html.escape(detail.approved_by)} at "
                    f"{t.timestamp(detail.summary.approved_at)}")
        if detail.awaiting_approval:
            return "waiting for a maintainer's approval"
        return ""

    @staticmethod
    def _gate(detail: RunDetail) -> str:
        """The run record's verdict: accepted, or quarantined with every reason."""
        if not detail.gate:
            return ""
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in detail.gate_reasons)
        colour = "success" if detail.gate == "accepted" else "failure"
        return (f"<span class='state {colour}'>{html.escape(detail.gate)}</span>"
                + (f"<ul class='reasons'>{reasons}</ul>" if reasons else ""))

    def _job_card(self, detail: RunDetail, job: JobSummary) -> str:
        needs = detail.needs.get(job.job_id, [])
        return (f"<div class='job {html.escape(job.state.value)}' id='job-{html.escape(job.key)}'>"
                f"<a href='{self.base}/jobs/{job.job_id}'>{html.escape(job.key)}</a> "
                f"{t.state(job.state.value)} <span class='took'>"
                f"{t.between(job.started_at, job.finished_at)}</span>"
                f"<div class='needs'>{html.escape(job.runs_on)}"
                f"{' · needs ' + html.escape(', '.join(needs)) if needs else ''}</div>"
                f"{f'<div>{html.escape(job.message)}</div>' if job.message else ''}</div>")

    # -- the job page ------------------------------------------------------------------

    async def job_page(self, request: Request) -> Response:
        job_id = path_uuid(request, "job_id")
        if job_id is None:
            return await prefix_redirect(self.db, request, "jobs", "job_id", "")
        run_id = await self.db.pool.fetchval("SELECT run_id FROM jobs WHERE id = $1", job_id)
        detail = await run_detail(self.db, run_id) if run_id else None
        try:
            log = await read_log(self.db, self.blobs, job_id)
        except LogUnavailable as exc:
            return log_unavailable(exc)
        if detail is None or log is None:
            return not_found("job")
        job = next(j for j in detail.summary.jobs if j.job_id == job_id)
        bodies: dict[int, list[str]] = {NO_STEP: []} | {s.index: [] for s in job.steps}
        line = 0
        for chunk in log.chunks:
            for text in to_html(chunk.data.decode(errors="replace")):
                line += 1
                bodies.setdefault(chunk.step_index, []).append(
                    f"<div class='line' id='L{line}'><a class='n' href='#L{line}'>{line}</a>"
                    f"<span class='t'>{text}</span></div>")
        steps = {s.index: s for s in job.steps}
        # The setup section stays while the job runs: its later lines (artifacts) go there.
        sections = "".join(self._step_section(index, steps.get(index), lines)
                           for index, lines in sorted(bodies.items())
                           if lines or index != NO_STEP or not log.done)
        base = f"{self.base}/jobs/{job_id}"
        held = await self.db.pool.fetchrow(
            "SELECT held_until, held_host FROM jobs WHERE id = $1 AND held_until > now()", job_id)
        head = (f"<h1>{html.escape(job.key)} {t.state(job.state.value, element_id='job-state')}</h1>"
                f"<dl class='meta'><dt>run</dt><dd><a href='{self.base}/runs/{detail.summary.run_id}'>"
                f"{html.escape(detail.row.repository)} {html.escape(detail.row.ref)}</a></dd>"
                f"<dt>commit</dt><dd>{_commit(detail.row)}</dd>"
                f"<dt>runs on</dt><dd>{html.escape(job.runs_on)}</dd>"
                f"<dt>attempt</dt><dd>{job.attempt}</dd>"
                + (f"<dt>message</dt><dd>{html.escape(job.message)}</dd>" if job.message else "")
                + (f"<dt>machine</dt><dd id='held'>held until {t.timestamp(held['held_until'])}"
                   f" on {html.escape(held['held_host'])}: <code>ciadm shell {job_id}</code></dd>"
                   if held else "")
                + f"<dt>queued</dt><dd>{t.timestamp(job.queued_at)}</dd>"
                f"<dt>started</dt><dd>{t.timestamp(job.started_at)}</dd>"
                f"<dt>finished</dt><dd>{t.timestamp(job.finished_at)}</dd>"
                f"<dt>duration</dt><dd>{t.between(job.started_at, job.finished_at)}</dd>"
                f"<dt>raw log</dt><dd><a href='{base}/log.txt' download>log.txt</a></dd></dl>")
        live = "" if log.done else t.JOB_SCRIPT
        return t.page(f"{job.key} {job.state.value}",
                      f"{head}<div id='log' data-lines='{line}' data-after='{log.last_seq or 0}'"
                      f" data-events='{base}/events?attempt={log.attempt}'>{sections}</div>",
                      base=self.base, script=live)

    @staticmethod
    def _step_section(index: int, step: StepSummary | None, lines: list[str]) -> str:
        """A foldable section of the log: its step's number, name, state and duration."""
        if index == NO_STEP:
            label = SETUP_NAME
        else:
            label = f"{index + 1}. {html.escape(step.name) if step else ''}"
        state = html.escape(step.state) if step else ""
        took = step.duration_ms / 1000 if step and step.duration_ms is not None else None
        return (f"<details open id='step{index}'><summary>{label} "
                f"<span class='state {state}'>{state}</span> "
                f"<span class='took'>{t.duration(took)}</span>"
                f"</summary><div class='lines'>{''.join(lines)}</div></details>")

    # -- the raw log ---------------------------------------------------------------------

    async def job_log(self, request: Request) -> Response:
        """The log as plain text after `?after=SEQ`, with `X-Solstice-Last-Seq` and
        `X-Solstice-Done`; a download (Content-Disposition) named after the job."""
        job_id = path_uuid(request, "job_id")
        if job_id is None:
            return await prefix_redirect(self.db, request, "jobs", "job_id", "/log.txt")
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            after = -1
        # Sequence numbers are bigint: anything outside would overflow the query.
        if not 0 <= after <= INT64_MAX:
            return PlainTextResponse(f"`after` must be a whole number from 0 to {INT64_MAX}",
                                     status_code=400)
        try:
            log = await read_log(self.db, self.blobs, job_id, after_seq=after)
        except LogUnavailable as exc:
            return log_unavailable(exc)
        if log is None:
            return not_found("job")
        body = b"".join(c.data for c in log.chunks)
        return Response(body, media_type="text/plain; charset=utf-8", headers={
            "X-Solstice-Last-Seq": str(log.last_seq or after),
            "X-Solstice-Done": "1" if log.done else "0",
            "Content-Disposition": f'attachment; filename="job-{job_id}-{log.attempt}.log"'})
