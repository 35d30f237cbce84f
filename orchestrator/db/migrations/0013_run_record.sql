-- The run record: the manifest written in the transaction that ends the run, and its gate's
-- verdict (`orchestrator/manifest.py`); which backend and image each job's machine had.
ALTER TABLE runs ADD COLUMN manifest jsonb,
    ADD COLUMN gate text CHECK (gate IN ('accepted', 'quarantined'));
ALTER TABLE jobs ADD COLUMN backend text, ADD COLUMN image text;
