"""Job events as GitHub check runs: one check run per job, queued -> in_progress -> completed.

`check_run_requests` turns one `JobEvent` into the request bodies GitHub's Checks API takes:
the first creates or updates the check run; annotations beyond GitHub's 50 per request follow
in further PATCH bodies (GitHub appends the annotations of each update). The bodies respect
GitHub's limits (65,535 characters of summary; at most 50 annotations per request), so the
tail of a huge log shortens instead of the whole update being refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from common.messages import JobEvent, JobState

# GitHub's documented limits.
TEXT_LIMIT = 65535
ANNOTATIONS_PER_REQUEST = 50
# Keeps the PATCHes of one failing job bounded (20 requests); a log with more diagnostics
# than this is read on the log page, where details_url points.
MAX_ANNOTATIONS = 1000

CONCLUSIONS: dict[JobState, str] = {
    JobState.SUCCESS: "success",
    JobState.FAILURE: "failure",
    JobState.ERROR: "failure",  # GitHub has no "error": the title says it was infrastructure
    JobState.CANCELLED: "cancelled",
    JobState.TIMED_OUT: "timed_out",
    JobState.SKIPPED: "neutral",
    JobState.AWAITING_APPROVAL: "action_required",
}

# GitHub's "requested action" button (label at most 20 characters, description 40,
# identifier 20); pressing it sends a check_run `requested_action` webhook with the identifier.
APPROVE_IDENTIFIER = "approve"
APPROVE_ACTION = {"label": "Approve and run", "description": "Run this untrusted code",
                  "identifier": APPROVE_IDENTIFIER}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# `path:line:col: message` as compilers, linters and test runners print it; the column is
# optional because many tools (gcc notes, flake8 with some formats, shellcheck gcc mode) omit it.
_DIAGNOSTIC = re.compile(
    r"^(?P<path>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)?\s*(?P<message>\S.*)$")
_LEVELS = (("warning", "warning"), ("note", "notice"), ("info", "notice"))


def check_run_name(event: JobEvent) -> str:
    """The check run's name: the same `solstice/<workflow>/<job>` as Forgejo's status context."""
    return f"solstice/{event.workflow_name or 'workflow'}/{event.job_key}"


def external_id(event: JobEvent) -> str:
    """What GitHub hands back in `check_run.external_id` when someone asks for a re-run."""
    return f"{event.run_id}/{event.job_key}"


def _level(message: str) -> str:
    lowered = message.lower()
    for prefix, level in _LEVELS:
        if lowered.startswith(prefix):
            return level
    return "failure"


def parse_annotations(log: str) -> list[dict[str, Any]]:
    """Annotations from the `file:line[:col]: message` lines of a step's log.

    Paths are taken relative to the repository (a leading `./` is dropped); absolute paths
    point outside the checkout, where GitHub has no file to attach them to, and are skipped.
    Duplicates (a diagnostic printed twice) are kept once.
    """
    seen: set[tuple[str, int, int | None, str]] = set()
    annotations: list[dict[str, Any]] = []
    for raw in log.splitlines():
        match = _DIAGNOSTIC.match(_ANSI.sub("", raw).strip())
        if not match or match["path"].startswith("/"):
            continue
        path = match["path"].removeprefix("./")
        line = int(match["line"])
        col = int(match["col"]) if match["col"] else None
        message = match["message"][:TEXT_LIMIT]
        key = (path, line, col, message)
        if line < 1 or key in seen:
            continue
        seen.add(key)
        annotation: dict[str, Any] = {"path": path, "start_line": line, "end_line": line,
                                      "annotation_level": _level(message), "message": message}
        if col:
            annotation["start_column"] = annotation["end_column"] = col
        annotations.append(annotation)
        if len(annotations) == MAX_ANNOTATIONS:
            break
    return annotations


def fit_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (so also characters), whole characters only."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


def _tail_fit(text: str, limit: int) -> str:
    """The end of `text` in at most `limit` UTF-8 bytes, starting on a whole line if possible."""
    data = text.encode()
    if len(data) <= limit:
        return text
    cut = data[len(data) - limit:].decode(errors="ignore")
    newline = cut.find("\n")
    return cut[newline + 1:] if 0 <= newline < len(cut) - 1 else cut


def _title(event: JobEvent) -> str:
    step = f" in step `{event.failing_step}`" if event.failing_step else ""
    return {
        JobState.QUEUED: "Queued",
        JobState.PROVISIONING: "Starting a VM",
        JobState.RUNNING: "Running",
        JobState.SUCCESS: "Succeeded",
        JobState.FAILURE: f"Failed{step}",
        JobState.ERROR: "Infrastructure error (not caused by the code under test)",
        JobState.CANCELLED: "Cancelled",
        JobState.TIMED_OUT: f"Timed out{step}",
        JobState.SKIPPED: "Skipped",
        JobState.AWAITING_APPROVAL: "Waiting for a maintainer's approval",
    }[event.state]


def _summary(event: JobEvent) -> str:
    """Description, failing step and the tail of its log, within GitHub's summary limit."""
    parts = [event.description or _title(event)]
    if event.state is JobState.AWAITING_APPROVAL:
        parts.append("This run is untrusted (a fork, or an author without write access) and "
                     "waits for a maintainer's approval. Someone with write access starts it "
                     "with **Approve and run** above, or by commenting `/solstice approve` on "
                     "the pull request.")
    if event.failing_step:
        parts.append(f"Failing step: `{event.failing_step}`")
    if event.log_url:
        parts.append(f"[Full log]({event.log_url})")
    head = "\n\n".join(parts)
    if not event.log_tail:
        return fit_text(head)
    # A fence longer than any backtick run in the log, so the log cannot close it early.
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", event.log_tail)), default=0) + 1)
    opening = f"{head}\n\nEnd of the log:\n\n{fence}\n"
    closing = f"\n{fence}\n"
    room = TEXT_LIMIT - len(opening.encode()) - len(closing.encode())
    if room <= 0:
        return fit_text(head)
    return opening + _tail_fit(event.log_tail.rstrip("\n"), room) + closing


def _timestamp(event: JobEvent) -> str:
    return event.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CheckRunRequests:
    """The body for the create-or-update call, then PATCH bodies with further annotations."""

    first: dict[str, Any]
    more: list[dict[str, Any]]


def check_run_requests(event: JobEvent, *, create: bool) -> CheckRunRequests:
    """The Checks API bodies that bring the job's check run to the state of `event`.

    `create` adds the fields only a POST takes (`name`, `head_sha`). Annotations come from
    the failing step's log on failure and time-out only.
    """
    output: dict[str, Any] = {"title": _title(event), "summary": _summary(event)}
    body: dict[str, Any] = {"external_id": external_id(event)}
    if create:
        body |= {"name": check_run_name(event), "head_sha": event.commit_sha}
    if event.log_url:
        body["details_url"] = event.log_url
    conclusion = CONCLUSIONS.get(event.state)
    if event.state is JobState.AWAITING_APPROVAL:
        body["actions"] = [APPROVE_ACTION]
    if conclusion:
        body |= {"status": "completed", "conclusion": conclusion,
                 "completed_at": _timestamp(event)}
    elif event.state is JobState.QUEUED:
        body["status"] = "queued"
    else:
        body |= {"status": "in_progress", "started_at": _timestamp(event)}
    annotations: list[dict[str, Any]] = []
    if event.state in (JobState.FAILURE, JobState.TIMED_OUT):
        annotations = parse_annotations(event.log_tail)
    batches = [annotations[i:i + ANNOTATIONS_PER_REQUEST]
               for i in range(0, len(annotations), ANNOTATIONS_PER_REQUEST)]
    body["output"] = output | ({"annotations": batches[0]} if batches else {})
    more = [{"output": output | {"annotations": batch}} for batch in batches[1:]]
    return CheckRunRequests(first=body, more=more)
