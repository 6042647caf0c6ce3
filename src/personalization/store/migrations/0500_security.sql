-- depends: 0002_write_path_support
-- Security and data rights (issue 6): API keys and the audit log, beside the spec's tables.

-- An API key is shown once on creation; only its hash is kept.  key_id is the public,
-- random lookup part of the key (pzk_<key_id>_<secret>), so verifying a key reads one row
-- by primary key and hashes once.  hash_scheme says how key_hash was made: 'hmac-sha256'
-- (keyed with the server secret PERSONALIZATION_API_KEY_SECRET) or 'scrypt' (slow hash,
-- used when no server secret is configured); verification follows the row's scheme.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scopes TEXT[] NOT NULL CHECK (cardinality(scopes) >= 1),
    hash_scheme TEXT NOT NULL CHECK (hash_scheme IN ('hmac-sha256', 'scrypt')),
    key_hash BYTEA NOT NULL,
    salt BYTEA,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);

-- Names identify keys for operators; two live keys may not share one.
CREATE UNIQUE INDEX api_keys_live_name_idx ON api_keys (name) WHERE revoked_at IS NULL;

-- Who did what, when, to what, with which counts.  No personal data: a user is recorded
-- only as subject_hash (SHA-256 of the user id), enough to answer "was this id erased?"
-- for an id given again, not enough to list erased users.
CREATE TABLE audit_log (
    audit_id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject_hash TEXT,
    target TEXT,
    outcome TEXT NOT NULL DEFAULT 'ok',
    details JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_action_at_idx ON audit_log (action, at DESC);
CREATE INDEX audit_log_subject_idx ON audit_log (subject_hash) WHERE subject_hash IS NOT NULL;
