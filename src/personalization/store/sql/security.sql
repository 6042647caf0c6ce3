-- Queries of the security package (API keys, audit log, erase).  Loaded by name.

-- name: insert_api_key
INSERT INTO api_keys (key_id, name, scopes, hash_scheme, key_hash, salt, created_by)
VALUES (%(key_id)s, %(name)s, %(scopes)s, %(hash_scheme)s, %(key_hash)s, %(salt)s, %(created_by)s)
RETURNING key_id, name, scopes, created_at, created_by, last_used_at, revoked_at;

-- name: get_api_key
SELECT key_id, name, scopes, hash_scheme, key_hash, salt, revoked_at
FROM api_keys WHERE key_id = %(key_id)s;

-- name: touch_api_key
-- Revalidation of a cached key: records the use and returns what may have changed.
UPDATE api_keys SET last_used_at = now()
WHERE key_id = %(key_id)s
RETURNING name, scopes, revoked_at;

-- name: list_api_keys
SELECT key_id, name, scopes, created_at, created_by, last_used_at, revoked_at
FROM api_keys
WHERE %(include_revoked)s OR revoked_at IS NULL
ORDER BY created_at, key_id;

-- name: revoke_api_key
-- Idempotent: a revoked key keeps its first revocation time.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
WHERE key_id = %(key_id)s
RETURNING key_id, name, scopes, created_at, created_by, last_used_at, revoked_at;

-- name: insert_audit
INSERT INTO audit_log (actor, action, subject_hash, target, outcome, details)
VALUES (%(actor)s, %(action)s, %(subject_hash)s, %(target)s, %(outcome)s, %(details)s)
RETURNING audit_id, at;

-- name: update_audit
UPDATE audit_log SET outcome = %(outcome)s, details = %(details)s WHERE audit_id = %(audit_id)s;

-- name: list_audit
SELECT audit_id, at, actor, action, subject_hash, target, outcome, details
FROM audit_log
WHERE (%(action)s::text IS NULL OR action = %(action)s)
ORDER BY audit_id DESC
LIMIT %(limit)s;

-- name: user_tables
-- Every table (outside the system schemas) with a uuid user_id column, except the two the
-- erase handles by name: learner state, feature-store snapshots, flag overrides and any
-- table added later are found here, so a new table cannot be forgotten by the erase.
-- Only tables every session can read: temporary tables (relpersistence 't', in the
-- pg_temp_N schemas) belong to one session, such as the learner's batch tables or the
-- feature export's, and touching another session's one is an error.  Schema names that
-- begin with pg_ are reserved by PostgreSQL (pg_catalog, pg_toast, pg_temp_N,
-- pg_toast_temp_N), so none of them holds user data.  Unlogged tables are real tables
-- and stay in.
SELECT n.nspname AS schema_name, c.relname AS table_name
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attname = 'user_id'
  AND a.atttypid = 'uuid'::regtype
  AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p')
  AND c.relpersistence IN ('p', 'u')
  AND NOT c.relispartition
  AND n.nspname <> 'information_schema'
  AND left(n.nspname, 3) <> 'pg_'
  AND NOT (n.nspname = 'public' AND c.relname IN ('user_profile', 'personalization_events', 'user_traits'))
ORDER BY n.nspname, c.relname;

-- name: lock_profile_for_erase
-- Blocks ingest of this user (it takes FOR KEY SHARE) until the erase commits.
SELECT user_id, privacy_level FROM user_profile WHERE user_id = %(user_id)s FOR UPDATE;

-- name: user_sessions
SELECT DISTINCT session_id FROM personalization_events
WHERE user_id = %(user_id)s AND session_id IS NOT NULL;

-- name: delete_user_events
DELETE FROM personalization_events WHERE user_id = %(user_id)s;

-- name: delete_user_traits
DELETE FROM user_traits WHERE user_id = %(user_id)s;

-- name: delete_user_profile
DELETE FROM user_profile WHERE user_id = %(user_id)s;

-- name: user_in_rollups
SELECT EXISTS (SELECT 1 FROM user_signal_rollups WHERE user_id = %(user_id)s) AS present;

-- name: export_profile
SELECT user_id, created_at, updated_at, denomination, spiritual_goal, preferred_translation,
       timezone, privacy_level
FROM user_profile WHERE user_id = %(user_id)s;

-- name: export_traits
SELECT trait_id, trait_type, trait_value, confidence, recorded_at
FROM user_traits WHERE user_id = %(user_id)s
ORDER BY recorded_at, trait_id;

-- name: export_events
SELECT event_id, session_id, content_id, content_type, signal_type, signal_weight, metadata, occurred_at
FROM personalization_events WHERE user_id = %(user_id)s
ORDER BY occurred_at, event_id;

-- name: export_rollups
SELECT content_type, signal_type, event_count, total_weight, last_seen_at
FROM user_signal_rollups WHERE user_id = %(user_id)s
ORDER BY content_type, signal_type;
