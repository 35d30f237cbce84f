-- The forge integrations' own state: which webhook deliveries were handled, and the outbox of
-- status updates still to be sent to a forge.

-- One row per delivery id handled to the end (run published, or ignored on purpose). A delivery
-- whose run could not be published is not recorded, so the forge's retry is processed again.
CREATE TABLE forge_deliveries (
    forge        text NOT NULL,               -- forgejo, gitea, github
    delivery_id  text NOT NULL,               -- X-Forgejo-Delivery / X-Gitea-Delivery / X-GitHub-Delivery
    outcome      text NOT NULL,               -- published, ignored: <reason>, ...
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (forge, delivery_id)
);

-- Status updates to send, ordered per key (a job) by sequence. `target` names the sender
-- (forgejo, github) so several integrations can share one database.
CREATE TABLE forge_outbox (
    id               bigserial PRIMARY KEY,
    target           text NOT NULL,
    key              text NOT NULL,
    sequence         integer NOT NULL,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed', 'superseded')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,             -- a sender is working on it until then
    last_error       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (target, key, sequence)
);
CREATE INDEX forge_outbox_pending ON forge_outbox (target, key, sequence) WHERE state = 'pending';
