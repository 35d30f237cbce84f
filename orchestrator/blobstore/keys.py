"""Where a run's files live in the blob store: everything of a run under `runs/<run-id>/`,
so deleting a run's record is one `delete_prefix(run_prefix(run_id))`.

    runs/<run-id>/jobs/<job>/attempt-<n>/<artifact path>

`<job>` is the job's key (`build[os=omnios,rust=stable]`) made into one path component by
`common.artifact_paths.job_directory` (what `ciadm download` names its directories too).
Artifact paths come in checked by `common.artifact_paths` (relative, no `..`, no control
characters).
"""
from __future__ import annotations

import uuid

from common.artifact_paths import job_directory


def run_prefix(run_id: uuid.UUID) -> str:
    """The prefix of every blob of one run."""
    return f"runs/{run_id}/"


def attempt_prefix(run_id: uuid.UUID, job_key: str, attempt: int) -> str:
    """The prefix of one job attempt's artifacts."""
    return f"{run_prefix(run_id)}jobs/{job_directory(job_key)}/attempt-{attempt}/"


def artifact_key(run_id: uuid.UUID, job_key: str, attempt: int, path: str) -> str:
    """The key of one artifact file of a job attempt."""
    return attempt_prefix(run_id, job_key, attempt) + path
