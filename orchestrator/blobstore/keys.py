"""Where a run's files live in the blob store: everything of a run under `runs/<run-id>/`,
so deleting a run's record is one `delete_prefix(run_prefix(run_id))`.

    runs/<run-id>/jobs/<job>/attempt-<n>/<artifact path>

`<job>` is the job's key (`build[os=omnios,rust=stable]`) made into one path component:
percent-encoded where a key could hold `/`, `%` or a control character, and shortened with a
digest past `MAX_JOB_COMPONENT` bytes. Artifact paths come in checked by
`common.artifact_paths` (relative, no `..`, no control characters).
"""
from __future__ import annotations

import hashlib
import uuid
from urllib.parse import quote

# Room for a run id, an attempt and an artifact path within a filesystem's name limit.
MAX_JOB_COMPONENT = 200
# Characters a job key keeps as they are: what keys are made of besides letters and digits.
JOB_SAFE = "[]=,+-_.@~ "


def job_component(job_key: str) -> str:
    """`job_key` as one key component (never empty, `.` or `..`)."""
    encoded = quote(job_key, safe=JOB_SAFE)
    if encoded.strip(".") == "":
        encoded = encoded.replace(".", "%2E") or "%00"
    if len(encoded) > MAX_JOB_COMPONENT:
        digest = hashlib.sha256(job_key.encode()).hexdigest()[:16]
        encoded = f"{encoded[:MAX_JOB_COMPONENT - 17]}~{digest}"
    return encoded


def run_prefix(run_id: uuid.UUID) -> str:
    """The prefix of every blob of one run."""
    return f"runs/{run_id}/"


def attempt_prefix(run_id: uuid.UUID, job_key: str, attempt: int) -> str:
    """The prefix of one job attempt's artifacts."""
    return f"{run_prefix(run_id)}jobs/{job_component(job_key)}/attempt-{attempt}/"


def artifact_key(run_id: uuid.UUID, job_key: str, attempt: int, path: str) -> str:
    """The key of one artifact file of a job attempt."""
    return attempt_prefix(run_id, job_key, attempt) + path
