-- `personalization status` and GET /healthz/platform (issue 19): the lag of each component.
-- A background worker's backlog query (lag kind "pending_rows") goes here too, by name.

-- name: learner_positions
-- Where the learner group resumes each partition (its offsets live beside its state).
SELECT partition, next_offset
FROM learner_offsets
WHERE group_id = %(group_id)s AND topic = %(topic)s
ORDER BY partition;

-- name: nightly_latest_run
SELECT run_id, status, as_of, started_at, finished_at
FROM feature_store.nightly_runs
ORDER BY run_id DESC
LIMIT 1;

-- name: nightly_latest_success
SELECT max(finished_at) AS finished_at, extract(epoch FROM now() - max(finished_at)) AS age_s
FROM feature_store.nightly_runs
WHERE status = 'succeeded';

-- name: relation_exists
-- A worker's backlog table may not exist on this schema version (its migration not applied).
SELECT to_regclass(%(relation)s) IS NOT NULL AS present;

-- name: count_relation
-- A backlog that holds only pending rows (an outbox): all of its rows count.  ``{relation}``
-- is filled in as a quoted identifier.
SELECT count(*) AS pending FROM {relation};

-- name: pending_erasures
-- Erasures whose rollup refresh, Kafka tombstones or second Redis delete are still to do
-- (the partial index erasures_pending_idx keeps this cheap as completed rows accumulate).
SELECT count(*) AS pending FROM erasures WHERE completed_at IS NULL;
