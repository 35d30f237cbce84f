-- The check run of each job, and how far the job's latest event got: its first request
-- (create or update) went through once `sequence` is stored, and `batches_sent` of its extra
-- annotation batches were appended. A retried delivery resumes from here.
CREATE TABLE github_check_runs (
    job_id        uuid PRIMARY KEY,
    check_run_id  bigint NOT NULL,
    completed     boolean NOT NULL,
    sequence      integer NOT NULL,
    batches_sent  integer NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
