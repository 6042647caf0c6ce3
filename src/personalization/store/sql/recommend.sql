-- Queries of the recommender (issue 16).

-- name: model_versions
SELECT kind, version FROM recommend_models;

-- name: model
SELECT kind, version, trained_at, trained_until, params, artefact FROM recommend_models WHERE kind = %(kind)s;

-- name: put_model
INSERT INTO recommend_models (kind, version, trained_until, params, artefact)
VALUES (%(kind)s, nextval('recommend_model_version_seq'), %(trained_until)s, %(params)s, %(artefact)s)
ON CONFLICT (kind) DO UPDATE SET
    version = EXCLUDED.version, trained_at = now(), trained_until = EXCLUDED.trained_until,
    params = EXCLUDED.params, artefact = EXCLUDED.artefact
RETURNING version;

-- name: catalog
-- Every content item and every embedded content id (embeddings may come without an item),
-- in content id order; embeddings of another dimension are left out.
SELECT COALESCE(i.content_id, e.content_id) AS content_id, i.content_type, i.title, i.passage_id,
       i.translation, i.series, i.position, COALESCE(i.tags, '{}') AS tags,
       CASE WHEN e.dim = %(dim)s THEN e.embedding END AS embedding
FROM content_items i
FULL JOIN content_embeddings e ON e.content_id = i.content_id
ORDER BY 1;

-- name: user_history
-- The reader's most recent events (personalization_events_user_time_idx).
SELECT content_id, signal_type, signal_weight::float8 AS signal_weight,
       extract(epoch FROM occurred_at)::float8 AS at
FROM personalization_events
WHERE user_id = %(user_id)s
ORDER BY occurred_at DESC
LIMIT %(limit)s;

-- name: window_engagement
-- Engagement of every reader (anonymous ones too) per content id and signal type in a time
-- window: sum of |signal_weight| * 2 ** (-age / half_life) at %(until)s.  The signed scale of
-- each signal type is applied by the caller (personalization.core.decay).
SELECT content_id, signal_type,
       SUM(abs(signal_weight)::float8
           * power(2.0, -extract(epoch FROM (%(until)s::timestamptz - occurred_at)) / %(half_life_s)s)) AS weight
FROM personalization_events
WHERE occurred_at >= %(since)s AND occurred_at <= %(until)s
GROUP BY content_id, signal_type;

-- name: training_events
-- Events of readers whose privacy level permits personalization, before a cut-off.
SELECT e.user_id, e.content_id, e.signal_type, e.signal_weight::float8 AS signal_weight,
       extract(epoch FROM e.occurred_at)::float8 AS at
FROM personalization_events e
JOIN user_profile p ON p.user_id = e.user_id
WHERE e.occurred_at < %(until)s
  AND (p.privacy_level = ANY(%(levels)s) OR (p.privacy_level IS NULL AND %(null_ok)s));

-- name: event_time_range
SELECT extract(epoch FROM min(occurred_at))::float8 AS first_at, extract(epoch FROM max(occurred_at))::float8 AS last_at,
       count(*) AS events
FROM personalization_events WHERE user_id IS NOT NULL;

-- name: profiles
-- Profiles and confident traits of readers (evaluation builds their contexts from them).
SELECT p.user_id, p.denomination, p.spiritual_goal, p.preferred_translation, p.privacy_level,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('type', t.trait_type, 'value', t.trait_value,
                                                     'confidence', t.confidence::float8))
                 FROM user_traits t WHERE t.user_id = p.user_id AND t.confidence >= %(min_confidence)s),
                '[]'::jsonb) AS traits
FROM user_profile p
WHERE p.user_id = ANY(%(user_ids)s);

