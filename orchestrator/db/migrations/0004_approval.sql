-- Untrusted runs that the repository wants approved first: their jobs wait in
-- 'awaiting_approval' (never released to the queue) until `ciadm approve RUN`.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('awaiting_approval', 'queued', 'provisioning', 'running', 'success',
                     'failure', 'error', 'cancelled', 'timed_out', 'skipped'));
ALTER TABLE runs ADD COLUMN approved_by text;
-- A re-run of one job (`RunRequest.rerun_of`) takes its workflow and trust from here.
ALTER TABLE runs ADD COLUMN workflow_source text;
