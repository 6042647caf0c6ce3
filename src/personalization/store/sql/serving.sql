-- Queries of the read path (preferences, flags, content embeddings, recent content).

-- name: preferences_snapshot
-- The profile plus, per trait type, one trait among those at or above the
-- confidence threshold: the newest (recorded_at), then the most confident, then
-- the smallest trait_id so the pick is total and repeatable.
SELECT p.user_id, p.updated_at, p.denomination, p.spiritual_goal, p.preferred_translation, p.timezone,
       p.privacy_level,
       COALESCE((
           SELECT jsonb_object_agg(t.trait_type, t.trait_value)
           FROM (
               SELECT DISTINCT ON (trait_type) trait_type, trait_value
               FROM user_traits
               WHERE user_id = p.user_id AND confidence >= %(min_confidence)s
               ORDER BY trait_type, recorded_at DESC, confidence DESC, trait_id
           ) t
       ), '{}'::jsonb) AS traits
FROM user_profile p
WHERE p.user_id = %(user_id)s;

-- name: user_embeddings_table
-- The online learner's durable embedding table, if that migration has run.
SELECT to_regclass('public.user_embeddings') IS NOT NULL AS present;

-- name: user_embedding
SELECT dim, embedding FROM user_embeddings WHERE user_id = %(user_id)s;

-- name: get_flag
SELECT flag, enabled, rollout_percent::float8 AS rollout_percent, conditions, salt, description, version,
       updated_at,
       COALESCE((SELECT jsonb_object_agg(o.user_id::text, o.enabled)
                 FROM feature_flag_overrides o WHERE o.flag = f.flag), '{}'::jsonb) AS overrides
FROM feature_flags f
WHERE f.flag = %(flag)s;

-- name: flag_version
SELECT version FROM feature_flags WHERE flag = %(flag)s;

-- name: upsert_flag
INSERT INTO feature_flags (flag, enabled, rollout_percent, conditions, salt, description)
VALUES (%(flag)s, %(enabled)s, %(rollout_percent)s, %(conditions)s, %(salt)s, %(description)s)
ON CONFLICT (flag) DO UPDATE SET
    enabled = EXCLUDED.enabled,
    rollout_percent = EXCLUDED.rollout_percent,
    conditions = EXCLUDED.conditions,
    salt = EXCLUDED.salt,
    description = EXCLUDED.description,
    version = feature_flags.version + 1,
    updated_at = now()
RETURNING version;

-- name: delete_flag_overrides
DELETE FROM feature_flag_overrides WHERE flag = %(flag)s;

-- name: insert_flag_overrides
INSERT INTO feature_flag_overrides (flag, user_id, enabled)
SELECT %(flag)s, u, e FROM unnest(%(user_ids)s::uuid[], %(enabled)s::bool[]) AS x(u, e);

-- name: missing_users
SELECT u FROM unnest(%(user_ids)s::uuid[]) AS x(u)
WHERE NOT EXISTS (SELECT 1 FROM user_profile p WHERE p.user_id = x.u);

-- name: content_vectors
-- Embeddings (of the deployment's dimension only) and content types of candidates.
SELECT c.content_id, e.embedding, i.content_type
FROM unnest(%(ids)s::text[]) AS c(content_id)
LEFT JOIN content_embeddings e ON e.content_id = c.content_id AND e.dim = %(dim)s
LEFT JOIN content_items i ON i.content_id = c.content_id;

-- name: content_type_popularity
-- Popularity per content type from the rollups (the rollups carry no content id).
SELECT content_type, SUM(total_weight)::float8 AS weight
FROM user_signal_rollups
GROUP BY content_type;

-- name: session_recent_content
-- Fallback when Redis is unavailable: the session's viewed content, newest first, distinct.
SELECT content_id FROM (
    SELECT content_id, MAX(occurred_at) AS last_at
    FROM personalization_events
    WHERE session_id = %(session_id)s AND signal_type = ANY(%(view_types)s)
    GROUP BY content_id
) v
ORDER BY last_at DESC, content_id
LIMIT %(cap)s;

-- name: upsert_content_embeddings
INSERT INTO content_embeddings (content_id, model, dim, embedding)
SELECT content_id, model, dim, embedding FROM content_import
ON CONFLICT (content_id) DO UPDATE SET
    model = EXCLUDED.model, dim = EXCLUDED.dim, embedding = EXCLUDED.embedding, updated_at = now();

-- name: upsert_content_items
INSERT INTO content_items (content_id, content_type, title)
SELECT content_id, content_type, title FROM content_import WHERE content_type IS NOT NULL
ON CONFLICT (content_id) DO UPDATE SET
    content_type = EXCLUDED.content_type,
    title = COALESCE(EXCLUDED.title, content_items.title),
    updated_at = now();
