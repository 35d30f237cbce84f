-- Runs, jobs, steps, logs, artifacts, the transactional outbox and the host registry.
-- Every state change is a conditional UPDATE on these tables; the CHECKs keep the state
-- machines honest whatever code writes to them.

CREATE TABLE runs (
    id             uuid PRIMARY KEY,
    request_id     text NOT NULL UNIQUE,          -- idempotency: one run per request
    repo           jsonb NOT NULL,
    commit_sha     text NOT NULL,
    ref            text NOT NULL,
    event          text NOT NULL,
    workflow_path  text NOT NULL,
    workflow_name  text NOT NULL DEFAULT '',
    trusted        boolean NOT NULL,
    priority       integer NOT NULL DEFAULT 0,
    fail_fast      boolean NOT NULL DEFAULT false,  -- the workflow's: a failed job cancels the rest
    request        jsonb NOT NULL,                -- the RunRequest as received
    state          text NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'running', 'success', 'failure', 'error',
                                    'cancelled', 'skipped')),
    message        text NOT NULL DEFAULT '',
    diagnostics    jsonb,                         -- workflow validation errors, if any
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    run_id            uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key               text NOT NULL,
    name              text NOT NULL,
    runs_on           text NOT NULL,
    needs             text[] NOT NULL DEFAULT '{}',
    spec              jsonb NOT NULL,             -- the planned job: steps, env, timeouts
    timeout_seconds   integer NOT NULL,
    state             text NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'provisioning', 'running', 'success',
                                       'failure', 'error', 'cancelled', 'timed_out',
                                       'skipped')),
    released          boolean NOT NULL DEFAULT false,  -- its JobRequest went to the outbox
    cancel_requested  boolean NOT NULL DEFAULT false,
    attempt           integer NOT NULL DEFAULT 0,      -- fencing number, +1 per lease
    lease_host        text,
    lease_expires_at  timestamptz,
    token_hash        bytea,                           -- sha256 of the one-time runner token
    token_used        boolean NOT NULL DEFAULT false,
    token_expires_at  timestamptz,
    message           text NOT NULL DEFAULT '',
    event_seq         integer NOT NULL DEFAULT 0,      -- last JobEvent sequence emitted
    created_at        timestamptz NOT NULL DEFAULT now(),
    leased_at         timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    UNIQUE (run_id, key)
);
CREATE INDEX jobs_active_lease ON jobs (lease_host) WHERE state IN ('provisioning', 'running');

CREATE TABLE steps (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    index        integer NOT NULL,
    name         text NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'success', 'failure', 'skipped',
                                  'cancelled', 'timed_out')),
    exit_code    integer,
    duration_ms  bigint,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (job_id, index)
);

-- One row per chunk the runner sent; (job, attempt, seq) makes a redelivered chunk a no-op.
CREATE TABLE log_chunks (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    seq         bigint NOT NULL,
    step_index  integer NOT NULL,
    stream      smallint NOT NULL,
    ts          timestamptz NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);

CREATE TABLE artifacts (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    path        text NOT NULL,
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, path)
);

-- Messages written in the same transaction as the state change that causes them; a relay
-- publishes them (confirmed) and marks them, so a crash between commit and publish loses nothing.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('job_request', 'job_event')),
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE hosts (
    name            text PRIMARY KEY,
    capacity        jsonb NOT NULL,              -- {label: slots}
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now()
);
