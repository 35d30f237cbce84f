"""The pages' HTML: one layout, the style sheet, the small scripts that follow live changes,
and formatting helpers. Everything interpolated is escaped here or by the caller."""
from __future__ import annotations

import html
from datetime import UTC, datetime

from starlette.responses import HTMLResponse

STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { background: #24292f; padding: .6rem 1rem; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
main { padding: 1rem; max-width: 80rem; margin: 0 auto; }
h1 { font-size: 1.3rem; overflow-wrap: anywhere; }
a { color: #0969da; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; } td, th { padding: .25rem .7rem; text-align: left; }
tr + tr td { border-top: 1px solid #d0d7de; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.meta dt { color: #656d76; } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; margin-bottom: 1rem; }
form.filters input, form.filters select { max-width: 10rem; }
.state { font-weight: 600; }
.success, .passing { color: #1a7f37; } .failure, .error, .timed_out, .failing { color: #cf222e; }
.running, .provisioning, .queued, .awaiting_approval, .pending { color: #9a6700; }
.skipped, .cancelled { color: #6e7781; }
.dag { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.dag .column { display: flex; flex-direction: column; gap: .5rem; min-width: 12rem; }
.dag .column h3 { font-size: .8rem; color: #656d76; margin: 0; }
.job { border: 1px solid #d0d7de; border-left-width: 4px; border-radius: 6px; padding: .4rem .6rem; }
.job.success { border-left-color: #1a7f37; } .job.failure, .job.error, .job.timed_out { border-left-color: #cf222e; }
.job .needs { color: #656d76; font-size: .8rem; }
#log { background: #0d1117; color: #e6edf3; border-radius: 6px; padding: .5rem 0; font-size: .85rem; }
#log summary { padding: .2rem .6rem; cursor: pointer; color: #e6edf3; }
#log summary .took { color: #8b949e; }
.line { display: flex; font-family: ui-monospace, monospace; }
.line:target, .line.target { background: #393000; }
.line .n { flex: none; width: 3.5rem; text-align: right; padding-right: .7rem; color: #6e7681;
           text-decoration: none; user-select: none; }
.line .t { flex: 1; min-width: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.fg0 { color: #484f58; } .fg1 { color: #ff7b72; } .fg2 { color: #3fb950; } .fg3 { color: #d29922; }
.fg4 { color: #58a6ff; } .fg5 { color: #bc8cff; } .fg6 { color: #39c5cf; } .fg7 { color: #b1bac4; }
.fg8 { color: #6e7681; } .fg9 { color: #ffa198; } .fg10 { color: #56d364; } .fg11 { color: #e3b341; }
.fg12 { color: #79c0ff; } .fg13 { color: #d2a8ff; } .fg14 { color: #56d4dd; } .fg15 { color: #ffffff; }
.bg0 { background: #484f58; } .bg1 { background: #ff7b72; } .bg2 { background: #3fb950; }
.bg3 { background: #d29922; } .bg4 { background: #58a6ff; } .bg5 { background: #bc8cff; }
.bg6 { background: #39c5cf; } .bg7 { background: #b1bac4; } .bg8 { background: #6e7681; }
.bg9 { background: #ffa198; } .bg10 { background: #56d364; } .bg11 { background: #e3b341; }
.bg12 { background: #79c0ff; } .bg13 { background: #d2a8ff; } .bg14 { background: #56d4dd; }
.bg15 { background: #ffffff; }
.b { font-weight: bold; } .i { font-style: italic; } .u { text-decoration: underline; }
"""

# The job page: appends each `log` event's lines to its step's section, numbering them on from
# the last server-rendered line; the browser resumes with Last-Event-ID after a drop. A stream
# the browser gave up on (an HTTP error) is reopened from the last event it got.
JOB_SCRIPT = """
<script>
(() => {
  const log = document.getElementById("log");
  let line = Number(log.dataset.lines), last = log.dataset.after, source;
  function section(step) {
    let box = document.getElementById("step" + step);
    if (!box) {
      box = document.createElement("details");
      box.id = "step" + step; box.open = true;
      box.innerHTML = "<summary>" + (step + 1) + ". <span class=state></span> <span class=took>" +
        "</span></summary><div class=lines></div>";
      log.appendChild(box);
    }
    return box.querySelector(".lines");
  }
  function states(data) {
    const state = document.getElementById("job-state");
    state.textContent = data.state; state.className = "state " + data.state;
    for (const s of data.steps) {
      const summary = document.querySelector("#step" + s.index + " summary");
      if (!summary) continue;
      summary.querySelector(".state").textContent = s.state;
      summary.querySelector(".state").className = "state " + s.state;
      summary.querySelector(".took").textContent = s.took;
    }
  }
  function connect() {
    const url = new URL(log.dataset.events, location.href);
    url.searchParams.set("after", last);
    source = new EventSource(url);
    source.addEventListener("log", (e) => {
      last = e.lastEventId;
      const data = JSON.parse(e.data), box = section(data.step);
      const follow = innerHeight + scrollY >= document.body.scrollHeight - 40;
      for (const html of data.lines) {
        line += 1;
        const div = document.createElement("div");
        div.className = "line"; div.id = "L" + line;
        div.innerHTML = "<a class=n href='#L" + line + "'>" + line + "</a><span class=t>" + html + "</span>";
        box.appendChild(div);
        if (location.hash === "#L" + line) { div.classList.add("target"); div.scrollIntoView(); }
      }
      if (follow && !location.hash) scrollTo(0, document.body.scrollHeight);
    });
    source.addEventListener("steps", (e) => states(JSON.parse(e.data)));
    source.addEventListener("end", (e) => { states(JSON.parse(e.data)); source.close(); });
    source.addEventListener("attempt", () => location.reload());
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 1000);
    };
  }
  connect();
})();
</script>
"""

# The run page: each `run` event carries the page's live part, rendered on the server.
RUN_SCRIPT = """
<script>
(() => {
  const run = document.getElementById("run");
  const source = new EventSource(new URL(run.dataset.events, location.href));
  source.addEventListener("run", (e) => { run.innerHTML = JSON.parse(e.data).html; });
  source.addEventListener("end", (e) => { run.innerHTML = JSON.parse(e.data).html; source.close(); });
})();
</script>
"""


def page(title: str, body: str, *, base: str, script: str = "") -> HTMLResponse:
    """A whole page: `body` is HTML already; `base` the path the pages are served under,
    escaped."""
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><a href='{base}/'>Solstice CI</a></header>"
        f"<main>{body}</main>{script}</body></html>")


def state(value: str, *, element_id: str = "") -> str:
    attr = f" id='{element_id}'" if element_id else ""
    return f"<span{attr} class='state {html.escape(value)}'>{html.escape(value)}</span>"


def link(url: str | None, text: str) -> str:
    """`text` (escaped) linked to `url` when there is one."""
    if url is None:
        return html.escape(text)
    return f"<a href='{html.escape(url)}'>{html.escape(text)}</a>"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def between(start: datetime | None, end: datetime | None) -> str:
    """How long from `start` to `end` (to now while it runs)."""
    if start is None:
        return ""
    return duration(((end or datetime.now(UTC)) - start).total_seconds())


def age(when: datetime) -> str:
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


def timestamp(when: datetime | None) -> str:
    if when is None:
        return ""
    text = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<time datetime='{when.isoformat()}'>{text}</time>"
