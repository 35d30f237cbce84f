-- Operator steering and one trace per run.
-- `ciadm drain HOST`: the host's executor reads it back with each heartbeat and stops taking
-- jobs (running ones finish); kept across restarts until `ciadm undrain HOST`.
ALTER TABLE hosts ADD COLUMN drained boolean NOT NULL DEFAULT false;
-- When a job's JobRequest last went to the queue (release, hand-back, re-run): `ciadm queue`
-- and the queue metrics measure the wait from here.
ALTER TABLE jobs ADD COLUMN queued_at timestamptz;
-- The attempt a re-run started after: infrastructure retries count from here.
ALTER TABLE jobs ADD COLUMN retry_base integer NOT NULL DEFAULT 0;
-- What each attempt of a job that was re-run ended as (the job row holds the latest).
CREATE TABLE job_attempts (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    state        text NOT NULL,
    message      text NOT NULL,
    host         text,
    started_at   timestamptz,
    finished_at  timestamptz,
    rerun_by     text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_attempts_job ON job_attempts (job_id, attempt);
-- W3C `traceparent` of the run's intake span, and of the span that wrote an outbox row: the
-- relay publishes each row inside the run's trace (see common/tracing.py).
ALTER TABLE runs ADD COLUMN trace_context text;
ALTER TABLE outbox ADD COLUMN trace_context text;
