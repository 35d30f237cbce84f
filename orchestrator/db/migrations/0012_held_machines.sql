-- Held machines (orchestrator/holds.py): a failed job's machine kept up for debugging until
-- `held_until`, on host `held_host`, whose Admin listener `held_admin` opens shells to it.
-- `hold_ttl` is an operator's request (`ciadm hold JOB --ttl`) on a job still running, in
-- seconds; the workflow's `hold_on_failure` is in the job's spec.
ALTER TABLE jobs ADD COLUMN held_until timestamptz, ADD COLUMN held_host text,
    ADD COLUMN held_admin text, ADD COLUMN hold_ttl integer CHECK (hold_ttl > 0);
