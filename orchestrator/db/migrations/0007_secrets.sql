-- Secrets of production jobs, encrypted with AES-GCM (orchestrator/secretstore). The keys are
-- never here: `key_id` names the configured key that sealed the row, and the scope and name
-- are the ciphertext's associated data, so a row copied to another scope does not decrypt.
CREATE TABLE secrets (
    id           bigserial PRIMARY KEY,
    scope_kind   text NOT NULL CHECK (scope_kind IN ('global', 'owner', 'repo')),
    scope_forge  text NOT NULL DEFAULT '',         -- '' = every forge
    scope_value  text NOT NULL DEFAULT '',         -- '' (global), owner, or owner/name; lower case
    name         text NOT NULL,
    ciphertext   bytea NOT NULL,                   -- with GCM's 16-byte tag
    nonce        bytea NOT NULL CHECK (length(nonce) = 12),
    key_id       text NOT NULL,
    branches     text[] NOT NULL DEFAULT '{}',     -- empty = every branch
    events       text[] NOT NULL DEFAULT '{}',     -- empty = every event kind
    set_by       text NOT NULL,
    set_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((scope_kind = 'global') = (scope_value = '' AND scope_forge = '')),
    UNIQUE (scope_kind, scope_forge, scope_value, name)
);
