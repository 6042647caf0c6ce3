-- Support objects beside the specification (the spec's own objects are untouched).

-- REFRESH MATERIALIZED VIEW CONCURRENTLY needs a unique index on plain columns
-- covering every row.  user_id is NULL for anonymous and erased users, and a
-- plain unique index treats NULLs as distinct, so NULLS NOT DISTINCT (PG 15+)
-- makes (NULL, type, signal) one key, which is exactly one row of the GROUP BY.
CREATE UNIQUE INDEX user_signal_rollups_key_idx
    ON user_signal_rollups (user_id, content_type, signal_type) NULLS NOT DISTINCT;

-- Traits are listed per user and type (preferences snapshot, trait listing).
CREATE INDEX user_traits_user_type_idx ON user_traits (user_id, trait_type, recorded_at DESC);

-- Session lookups (recent content rebuild, erase of a user's sessions).
CREATE INDEX personalization_events_session_idx
    ON personalization_events (session_id) WHERE session_id IS NOT NULL;
