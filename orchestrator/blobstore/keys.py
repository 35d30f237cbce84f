"""Where a run's files live in the blob store: everything of a run under `runs/<run-id>/`,
so deleting a run's record is one `delete_prefix(run_prefix(run_id))`.

    runs/<run-id>/jobs/<job>/attempt-<n>/<artifact path>
    runs/<run-id>/logs/<job>/attempt-<n>/<first seq>-<token>.jsonl.gz   (compacted logs)

`<job>` is the job's key (`build[os=omnios,rust=stable]`) made into one path component by
`common.artifact_paths.job_directory` (what `ciadm download` names its directories too).
Compacted logs sit beside, not under, the attempt's artifacts, whose names are the job's.
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


def log_archive_key(run_id: uuid.UUID, job_key: str, attempt: int, first_seq: int,
                    token: str) -> str:
    """The key of one compacted segment of a job attempt's log; `token` makes each
    compaction's blob its own (see `orchestrator.logarchive`)."""
    return (f"{run_prefix(run_id)}logs/{job_directory(job_key)}/attempt-{attempt}/"
            f"{first_seq}-{token}.jsonl.gz")
