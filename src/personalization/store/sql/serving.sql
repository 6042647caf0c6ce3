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

-- name: lock_content_import
-- One content import at a time (transaction-scoped): its checks see a settled
-- catalogue and the catalogue version rises in commit order.
SELECT pg_advisory_xact_lock(hashtextextended('personalization.content_import', 0));

-- name: create_content_import
-- The staging table of one import: row_no is the row's line (jsonl) or row number,
-- for messages; NULL catalogue values mean "not given" (the stored value stays).
CREATE TEMP TABLE content_import (
    row_no INTEGER NOT NULL,
    content_id TEXT NOT NULL,
    model TEXT,
    dim INTEGER,
    embedding BYTEA,
    has_catalog BOOLEAN NOT NULL,
    content_type TEXT,
    title TEXT,
    body TEXT,
    passage_id TEXT,
    translation TEXT,
    series TEXT,
    position INTEGER,
    tags TEXT[],
    metadata JSONB
) ON COMMIT DROP;

-- name: copy_content_import
COPY content_import (row_no, content_id, model, dim, embedding, has_catalog, content_type, title, body,
                     passage_id, translation, series, position, tags, metadata) FROM STDIN (FORMAT BINARY);

-- name: upsert_content_embeddings
INSERT INTO content_embeddings (content_id, model, dim, embedding)
SELECT content_id, model, dim, embedding FROM content_import WHERE embedding IS NOT NULL
ON CONFLICT (content_id) DO UPDATE SET
    model = EXCLUDED.model, dim = EXCLUDED.dim, embedding = EXCLUDED.embedding, updated_at = now();

-- name: update_content_items
-- Catalogue rows of items already in the catalogue: the values given replace the stored ones.
UPDATE content_items c SET
    content_type = COALESCE(i.content_type, c.content_type),
    title = COALESCE(i.title, c.title),
    body = COALESCE(i.body, c.body),
    metadata = COALESCE(i.metadata, c.metadata),
    passage_id = COALESCE(i.passage_id, c.passage_id),
    translation = COALESCE(i.translation, c.translation),
    series = COALESCE(i.series, c.series),
    position = COALESCE(i.position, c.position),
    tags = COALESCE(i.tags, c.tags),
    updated_at = now()
FROM content_import i
WHERE i.has_catalog AND i.content_id = c.content_id;

-- name: insert_content_items
-- Catalogue rows of new items (those without a content_type are reported by the next query).
INSERT INTO content_items (content_id, content_type, title, body, metadata, passage_id, translation, series,
                           position, tags)
SELECT i.content_id, i.content_type, i.title, i.body, i.metadata, i.passage_id, i.translation, i.series,
       i.position, COALESCE(i.tags, '{}')
FROM content_import i
WHERE i.has_catalog AND i.content_type IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM content_items c WHERE c.content_id = i.content_id);

-- name: content_import_untyped
-- After the upsert: the first catalogue row whose item is still not in the catalogue
-- (new content that named no content_type).
SELECT i.row_no, i.content_id
FROM content_import i
WHERE i.has_catalog AND NOT EXISTS (SELECT 1 FROM content_items c WHERE c.content_id = i.content_id)
ORDER BY i.row_no
LIMIT 1;

-- name: content_import_translation_clash
-- After the upsert: the first imported item whose passage has another item in the same
-- translation (checked on the final state, so an import may move items between passages).
SELECT i.row_no, c.content_id, c.passage_id, c.translation, o.content_id AS other
FROM content_import i
JOIN content_items c ON c.content_id = i.content_id
JOIN content_items o ON o.passage_id = c.passage_id AND o.translation = c.translation
                    AND o.content_id <> c.content_id
WHERE i.has_catalog AND c.passage_id IS NOT NULL AND c.translation IS NOT NULL
ORDER BY i.row_no, o.content_id
LIMIT 1;

-- name: bump_catalog_version
UPDATE catalog_version SET version = version + 1, updated_at = now() RETURNING version;

-- name: catalog_version
-- The durable catalogue version (0 before the first import).
SELECT version FROM catalog_version;
