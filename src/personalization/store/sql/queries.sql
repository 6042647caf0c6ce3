-- Queries of the signal store.  Each one is loaded by name (store/queries.py).

-- name: upsert_profile
-- Create or replace a profile; created_at survives a replace.
INSERT INTO user_profile (user_id, denomination, spiritual_goal, preferred_translation, timezone, privacy_level)
VALUES (%(user_id)s, %(denomination)s, %(spiritual_goal)s, %(preferred_translation)s, %(timezone)s,
        COALESCE(%(privacy_level)s, 'standard'))
ON CONFLICT (user_id) DO UPDATE SET
    denomination = EXCLUDED.denomination,
    spiritual_goal = EXCLUDED.spiritual_goal,
    preferred_translation = EXCLUDED.preferred_translation,
    timezone = EXCLUDED.timezone,
    privacy_level = EXCLUDED.privacy_level,
    updated_at = now()
RETURNING user_id, created_at, updated_at, denomination, spiritual_goal, preferred_translation,
          timezone, privacy_level, (xmax = 0) AS created;

-- name: get_profile
SELECT user_id, created_at, updated_at, denomination, spiritual_goal, preferred_translation,
       timezone, privacy_level
FROM user_profile WHERE user_id = %(user_id)s;

-- name: delete_profile
DELETE FROM user_profile WHERE user_id = %(user_id)s RETURNING user_id;

-- name: list_traits
SELECT trait_id, user_id, trait_type, trait_value, confidence, recorded_at
FROM user_traits WHERE user_id = %(user_id)s
ORDER BY trait_type, recorded_at DESC, trait_id;

-- name: insert_trait
INSERT INTO user_traits (trait_id, user_id, trait_type, trait_value, confidence, recorded_at)
VALUES (%(trait_id)s, %(user_id)s, %(trait_type)s, %(trait_value)s, %(confidence)s,
        COALESCE(%(recorded_at)s, now()))
RETURNING trait_id, user_id, trait_type, trait_value, confidence, recorded_at;

-- name: replace_trait
-- PUT semantics: create the trait under this id or replace it; the trait must
-- belong to the user in the path.
INSERT INTO user_traits (trait_id, user_id, trait_type, trait_value, confidence, recorded_at)
VALUES (%(trait_id)s, %(user_id)s, %(trait_type)s, %(trait_value)s, %(confidence)s,
        COALESCE(%(recorded_at)s, now()))
ON CONFLICT (trait_id) DO UPDATE SET
    trait_type = EXCLUDED.trait_type,
    trait_value = EXCLUDED.trait_value,
    confidence = EXCLUDED.confidence,
    recorded_at = EXCLUDED.recorded_at
WHERE user_traits.user_id = EXCLUDED.user_id
RETURNING trait_id, user_id, trait_type, trait_value, confidence, recorded_at, (xmax = 0) AS created;

-- name: delete_trait
DELETE FROM user_traits WHERE user_id = %(user_id)s AND trait_id = %(trait_id)s RETURNING trait_id;

-- name: lock_users_for_ingest
-- Lock the referenced profiles against delete until the batch commits, so the
-- COPY below cannot fail on the foreign key half-way through a group.
-- Ids in and out are canonical UUID text (the write path keeps them as strings); they
-- arrive comma-separated in one parameter, not as an array of thousands of values.
SELECT user_id::text, privacy_level FROM user_profile
WHERE user_id = ANY(string_to_array(%(user_ids)s, ',')::uuid[])
ORDER BY user_id
FOR KEY SHARE;

-- name: user_exists
SELECT 1 FROM user_profile WHERE user_id = %(user_id)s;
