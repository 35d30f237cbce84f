-- Artifacts are streamed into ordered chunk rows instead of one bytea value, so neither the
-- orchestrator nor PostgreSQL ever holds a whole file in memory (a 1 GB bytea must be built
-- whole on both sides). An artifact belongs to one attempt of its job: a retried attempt
-- uploads its own files, and a path can be stored once per attempt (a second upload of the
-- same path is refused, never a silent overwrite). The files stored so far keep their bytes
-- as one chunk each.
ALTER TABLE artifacts ADD COLUMN id bigserial, ADD COLUMN attempt integer;
UPDATE artifacts a SET attempt = j.attempt FROM jobs j WHERE j.id = a.job_id;
ALTER TABLE artifacts ALTER COLUMN attempt SET NOT NULL;
ALTER TABLE artifacts DROP CONSTRAINT artifacts_pkey;
ALTER TABLE artifacts ADD PRIMARY KEY (id);
ALTER TABLE artifacts ADD CONSTRAINT artifacts_job_attempt_path_key UNIQUE (job_id, attempt, path);

CREATE TABLE artifact_chunks (
    artifact_id bigint NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (artifact_id, seq)
);
-- Build outputs are mostly compressed already (archives, images): pglz would spend CPU on
-- every chunk to gain little.
ALTER TABLE artifact_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

INSERT INTO artifact_chunks (artifact_id, seq, data) SELECT id, 0, data FROM artifacts;
ALTER TABLE artifacts DROP COLUMN data;
