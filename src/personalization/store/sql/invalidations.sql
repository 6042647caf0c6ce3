-- The invalidation outbox (migration 0801).  Loaded by name.

-- name: record_invalidation
INSERT INTO cache_invalidations (user_id) VALUES (%(user_id)s) RETURNING invalidation_id;

-- name: clear_invalidation
DELETE FROM cache_invalidations WHERE invalidation_id = %(invalidation_id)s;

-- name: claim_invalidations
-- The oldest rows, locked for this replayer; other processes skip them.
SELECT invalidation_id, user_id FROM cache_invalidations
 ORDER BY invalidation_id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- name: delete_invalidations
DELETE FROM cache_invalidations WHERE invalidation_id = ANY(%(ids)s);

-- name: pending_invalidations
SELECT count(*) AS pending FROM cache_invalidations;
