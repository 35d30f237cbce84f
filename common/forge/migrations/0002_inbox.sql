-- The webhook inbox: every delivery that passed its signature check is stored here, in one
-- statement, before it is answered; an inbox worker then plans and publishes its run.
-- `state`: pending (to process, at `next_attempt_at`), done (its run was published),
-- ignored (nothing to run, `outcome` says why), rejected (answered 400, `outcome` says why),
-- parked (failed `attempts` times or for good; `last_error` says why; `retry` puts it back).
CREATE TABLE forge_inbox (
    id               bigserial PRIMARY KEY,
    forge            text NOT NULL,               -- forgejo, gitea, github
    delivery_id      text NOT NULL,               -- X-Forgejo-Delivery / X-Gitea-Delivery / X-GitHub-Delivery
    event            text NOT NULL,
    body             bytea NOT NULL,              -- the signed bytes, as received
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'done', 'ignored', 'rejected', 'parked')),
    outcome          text NOT NULL DEFAULT '',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,                 -- a worker is processing it until then
    last_error       text NOT NULL DEFAULT '',
    received_at      timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (forge, delivery_id)
);
CREATE INDEX forge_inbox_due ON forge_inbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX forge_inbox_parked ON forge_inbox (forge, id) WHERE state = 'parked';

-- Wakes the inbox workers of every integration process (LISTEN forge_inbox) when a delivery
-- to process is stored; the payload is its forge.
CREATE FUNCTION forge_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('forge_inbox', NEW.forge);
    RETURN NULL;
END $$;
CREATE TRIGGER forge_inbox_stored AFTER INSERT OR UPDATE OF state ON forge_inbox
    FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION forge_inbox_notify();
