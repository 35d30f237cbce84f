-- Who administers, and what they did.
--
-- Named admin tokens (`ciadm token create NAME`): only the SHA-256 of each token is kept; a
-- revoked token stays listed (who created and who revoked it) and its name is not reused.
-- The configured `admin_token` is the bootstrap token, named "bootstrap", never stored here.
CREATE TABLE admin_tokens (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'
                                          AND name <> 'bootstrap'),
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    text
);

-- Every administrative action, allowed or refused: an append-only record.
CREATE TABLE audit_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,            -- `token:NAME`, or a forge login (`github:alice`)
    action   text NOT NULL,            -- approve, cancel, token.create, secret.set, ...
    target   text NOT NULL DEFAULT '', -- the run id, token name, secret scope/name, ...
    outcome  text NOT NULL,            -- `ok`, or why it was refused
    detail   text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- Who approved (approved_by since 0004) or cancelled a run, and when.
ALTER TABLE runs ADD COLUMN approved_at timestamptz,
                 ADD COLUMN cancelled_by text,
                 ADD COLUMN cancelled_at timestamptz;

-- A run whose jobs wait for a maintainer is `awaiting_approval` itself (it was `queued`, so
-- `ciadm runs --state awaiting_approval` found nothing); approval makes it `queued`.
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check
    CHECK (state IN ('awaiting_approval', 'queued', 'running', 'success', 'failure', 'error',
                     'cancelled', 'skipped'));
UPDATE runs SET state = 'awaiting_approval'
 WHERE state = 'queued'
   AND EXISTS (SELECT 1 FROM jobs WHERE jobs.run_id = runs.id
                                    AND jobs.state = 'awaiting_approval');
