-- The erase outbox (migration 0800): what an erase leaves to the erasure worker.  Loaded by name.

-- name: user_flag_names
-- The flags whose cached result may exist for any user (feature_flag:{flag}:{user_id}); the
-- read path caches results of known flags only, and flags are never deleted.
SELECT flag FROM feature_flags ORDER BY flag;

-- name: insert_erasure
INSERT INTO erasures (erasure_id, subject_hash, subject_id, redis_keys, actor, audit_id)
VALUES (%(erasure_id)s, %(subject_hash)s, %(subject_id)s, %(redis_keys)s, %(actor)s, %(audit_id)s);

-- name: insert_erasure_parts
INSERT INTO erasure_parts (erasure_id, part, state, done_at)
SELECT %(erasure_id)s, p.part, p.state, CASE WHEN p.state = 'pending' THEN NULL ELSE now() END
  FROM unnest(%(parts)s::text[], %(states)s::text[]) AS p(part, state);

-- name: claim_one_part
-- The request's own part, unless a worker holds it (then the worker completes it).  Parts
-- are always locked before erasures, by everyone: no two completers can deadlock.
SELECT erasure_id FROM erasure_parts
 WHERE erasure_id = %(erasure_id)s AND part = %(part)s AND state = 'pending'
   FOR UPDATE SKIP LOCKED;

-- name: lock_erasures
-- Taken first by everyone who completes a part: the "anything still pending?" check below
-- then sees every other completer's committed update (no two finish without seeing each other).
SELECT erasure_id FROM erasures WHERE erasure_id = ANY(%(ids)s) ORDER BY erasure_id FOR UPDATE;

-- name: mark_parts_done
UPDATE erasure_parts
   SET state = 'done', done_at = now(), last_error = NULL, attempts = attempts + 1
 WHERE erasure_id = ANY(%(ids)s) AND part = %(part)s AND state = 'pending';

-- name: complete_erasures
-- Erasures with no pending part left: completed, the user id and key names dropped, and the
-- erase's audit row gets its final outcome (one statement, in the completer's transaction).
WITH done AS (
    UPDATE erasures e
       SET completed_at = clock_timestamp(), subject_id = NULL, redis_keys = NULL
     WHERE e.erasure_id = ANY(%(ids)s) AND e.completed_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM erasure_parts p WHERE p.erasure_id = e.erasure_id AND p.state = 'pending')
    RETURNING e.erasure_id, e.audit_id, e.actor, e.subject_hash, e.requested_at, e.completed_at
), audited AS (
    UPDATE audit_log a
       SET outcome = 'ok',
           details = a.details || jsonb_build_object(
               'erasure_id', d.erasure_id::text,
               'completed_at', d.completed_at,
               'completion_s', round(extract(epoch FROM d.completed_at - d.requested_at)::numeric, 3))
      FROM done d
     WHERE a.audit_id = d.audit_id
    RETURNING a.audit_id, a.details
)
SELECT d.erasure_id, d.audit_id, d.actor, d.subject_hash, d.requested_at, d.completed_at,
       au.details AS audit_details
  FROM done d LEFT JOIN audited au ON au.audit_id = d.audit_id;

-- name: retry_parts_later
-- A failed attempt: back off exponentially (0.5 s doubling, at most %(max_backoff_s)s).
UPDATE erasure_parts
   SET attempts = attempts + 1, last_error = %(error)s,
       next_attempt_at = now() + make_interval(secs => least(%(max_backoff_s)s::float8,
                                                              0.5 * power(2, least(attempts, 20))))
 WHERE erasure_id = ANY(%(ids)s) AND part = %(part)s AND state = 'pending';

-- name: try_rollups_lock
-- One rollups refresher at a time across every process (transaction-level advisory lock).
SELECT pg_try_advisory_xact_lock(%(key)s::bigint) AS locked;

-- name: claim_parts
-- Pending parts that are due, locked for this worker; other processes skip them.
SELECT p.erasure_id, e.subject_id, e.redis_keys, p.attempts
  FROM erasure_parts p JOIN erasures e ON e.erasure_id = p.erasure_id
 WHERE p.part = %(part)s AND p.state = 'pending' AND p.next_attempt_at <= now()
   AND e.requested_at <= now() - make_interval(secs => %(min_age_s)s::float8)
 ORDER BY p.next_attempt_at
 LIMIT %(limit)s
   FOR UPDATE OF p SKIP LOCKED;

-- name: rollups_hold_any
-- The view still holds one of these users (a nightly swap since the erase may have removed them).
SELECT EXISTS (SELECT 1 FROM user_signal_rollups WHERE user_id = ANY(%(ids)s)) AS present;

-- name: rollups_refresh_timeout
-- The refresh runs as long as the aggregate takes (seconds at millions of events); the
-- deployment's statement timeout is meant for requests.
SELECT set_config('statement_timeout', %(timeout)s, true);

-- name: refresh_rollups
REFRESH MATERIALIZED VIEW CONCURRENTLY user_signal_rollups;

-- name: get_erasure
SELECT e.erasure_id, e.subject_hash, e.requested_at, e.completed_at, e.audit_id,
       coalesce(jsonb_object_agg(p.part, jsonb_build_object(
           'state', p.state, 'attempts', p.attempts, 'last_error', p.last_error,
           'done_at', p.done_at,
           'next_attempt_at', CASE WHEN p.state = 'pending' THEN p.next_attempt_at END))
           FILTER (WHERE p.part IS NOT NULL), '{}'::jsonb) AS parts
  FROM erasures e LEFT JOIN erasure_parts p ON p.erasure_id = e.erasure_id
 WHERE e.erasure_id = %(erasure_id)s
 GROUP BY e.erasure_id;

-- name: pending_erasures
SELECT count(*) AS pending FROM erasures WHERE completed_at IS NULL;
