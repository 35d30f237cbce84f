-- Retention. A job attempt's log chunks, once it ended, are compacted into blobs of the blob
-- store (orchestrator/logarchive.py): one `log_archives` row per blob, inserted in the same
-- transaction that deletes the rows it holds, so a log is at every moment either rows or an
-- archive and never neither. Chunks that arrive after a compaction make a later segment.
CREATE TABLE log_archives (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    chunks      integer NOT NULL,
    data_bytes  bigint NOT NULL,          -- the log's bytes, uncompressed
    store_key   text NOT NULL UNIQUE,
    size        bigint NOT NULL,          -- the compressed blob's bytes
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt, first_seq)
);

-- The retention sweeper (orchestrator/retention.py) deletes a run's rows and records its blob
-- prefix here in one transaction, then deletes the blobs and this row: a crash in between
-- leaves a prefix the next sweep (on any host) deletes, never a row naming a missing blob.
CREATE TABLE blob_deletions (
    prefix      text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX runs_finished_at ON runs (finished_at) WHERE finished_at IS NOT NULL;
