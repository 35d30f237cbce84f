-- Host registry (orchestrator/hosts.py): which process holds a host name, on which machine,
-- and whether it is draining or stopped cleanly. A stopped host is never stale.
ALTER TABLE hosts
    ADD COLUMN instance    uuid,
    ADD COLUMN machine     text NOT NULL DEFAULT '',
    ADD COLUMN pid         integer,
    ADD COLUMN state       text NOT NULL DEFAULT 'running'
                           CHECK (state IN ('running', 'draining', 'stopped')),
    ADD COLUMN stopped_at  timestamptz;
