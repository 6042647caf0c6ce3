-- Online learner (issue 4): state tables of migration 0300_learner.

-- name: stored_offsets
-- Where each assigned partition resumes (no lock: only a hint for the seek; the batch
-- transaction re-checks under lock).
SELECT partition, next_offset
FROM learner_offsets
WHERE group_id = %(group_id)s AND topic = %(topic)s AND partition = ANY(%(partitions)s);

-- name: ensure_offsets
-- Rows for partitions seen for the first time, so that the lock below always finds them.
INSERT INTO learner_offsets (group_id, topic, partition, next_offset)
SELECT %(group_id)s, %(topic)s, p, 0 FROM unnest(%(partitions)s::int[]) AS p
ON CONFLICT (group_id, topic, partition) DO NOTHING;

-- name: lock_offsets
-- Serialises every writer of one partition (a member that lost the partition in a
-- rebalance but still finishes a batch waits here, then sees the newer offset).
SELECT partition, next_offset, hw_commit_lsn, hw_lsn, hw_event_id
FROM learner_offsets
WHERE group_id = %(group_id)s AND topic = %(topic)s AND partition = ANY(%(partitions)s)
ORDER BY partition
FOR UPDATE;

-- name: save_offsets
UPDATE learner_offsets o
SET next_offset = v.next_offset,
    hw_commit_lsn = v.hw_commit_lsn,
    hw_lsn = v.hw_lsn,
    hw_event_id = v.hw_event_id,
    updated_at = now()
FROM unnest(%(partitions)b::int[], %(next_offsets)b::bigint[], %(hw_commit_lsns)b::bigint[],
            %(hw_lsns)b::bigint[], %(hw_event_ids)b::bigint[])
     AS v(partition, next_offset, hw_commit_lsn, hw_lsn, hw_event_id)
WHERE o.group_id = %(group_id)s AND o.topic = %(topic)s AND o.partition = v.partition;

-- name: lock_users
-- The users of a batch that still exist, with their privacy level.  KEY SHARE keeps them
-- from being deleted until the batch commits (the state rows reference them), without
-- blocking ingest, which takes the same lock.
SELECT user_id, privacy_level
FROM user_profile
WHERE user_id = ANY(%(user_ids)s)
ORDER BY user_id
FOR KEY SHARE;

-- name: existing_users
SELECT user_id FROM user_profile WHERE user_id = ANY(%(user_ids)s);

-- name: rebuild_snapshots
SELECT user_id, snapshot::text AS snapshot FROM learner_rebuilds WHERE user_id = ANY(%(user_ids)s);

-- name: content_vectors
SELECT content_id, model, dim, embedding FROM content_embeddings WHERE content_id = ANY(%(content_ids)s);

-- name: load_embeddings
SELECT user_id, model, dim, raw_sum, ref_time, event_count, embedded_count
FROM user_embeddings
WHERE user_id = ANY(%(user_ids)s);

-- name: upsert_scores
INSERT INTO user_signal_scores (user_id, content_type, signal_type, score, ref_time, event_count, updated_at)
SELECT u, ct, st, s, r, n, now()
FROM unnest(%(user_ids)b::uuid[], %(content_types)b::text[], %(signal_types)b::text[],
            %(scores)b::float8[], %(ref_times)b::timestamptz[], %(counts)b::bigint[]) AS v(u, ct, st, s, r, n)
ON CONFLICT (user_id, content_type, signal_type) DO UPDATE
SET score = EXCLUDED.score, ref_time = EXCLUDED.ref_time, event_count = EXCLUDED.event_count,
    updated_at = EXCLUDED.updated_at;

-- name: upsert_embeddings
INSERT INTO user_embeddings (user_id, model, dim, raw_sum, ref_time, event_count, embedded_count, embedding,
                             updated_at)
SELECT u, m, d, raw, r, n, ne, e, now()
FROM unnest(%(user_ids)b::uuid[], %(models)b::text[], %(dims)b::int[], %(raw_sums)b::bytea[],
            %(ref_times)b::timestamptz[], %(counts)b::bigint[], %(embedded_counts)b::bigint[],
            %(embeddings)b::bytea[]) AS v(u, m, d, raw, r, n, ne, e)
ON CONFLICT (user_id) DO UPDATE
SET model = EXCLUDED.model, dim = EXCLUDED.dim, raw_sum = EXCLUDED.raw_sum, ref_time = EXCLUDED.ref_time,
    event_count = EXCLUDED.event_count, embedded_count = EXCLUDED.embedded_count,
    embedding = EXCLUDED.embedding, updated_at = EXCLUDED.updated_at;

-- name: delete_embeddings
DELETE FROM user_embeddings WHERE user_id = ANY(%(user_ids)s);

-- name: delete_scores
DELETE FROM user_signal_scores WHERE user_id = ANY(%(user_ids)s);

-- name: delete_rebuilds
DELETE FROM learner_rebuilds WHERE user_id = ANY(%(user_ids)s);

-- name: recent_embeddings
-- Redis resync after a restart: embeddings that changed recently.
SELECT user_id, embedding FROM user_embeddings
WHERE updated_at >= now() - make_interval(secs => %(seconds)s) AND embedding IS NOT NULL;

-- name: lock_user_for_rebuild
-- A recomputation waits for in-flight learner batches of the user (they hold KEY SHARE).
SELECT user_id, privacy_level FROM user_profile WHERE user_id = %(user_id)s FOR UPDATE;

-- name: user_events_with_snapshot
-- One statement, one snapshot: the events it returns are exactly those visible in it.
SELECT s.snap::text AS snapshot, e.content_id, e.content_type, e.signal_type,
       e.signal_weight::float8 AS signal_weight, e.occurred_at
FROM (SELECT pg_current_snapshot() AS snap) s
LEFT JOIN personalization_events e ON e.user_id = %(user_id)s
ORDER BY e.event_id;

-- name: save_rebuild
INSERT INTO learner_rebuilds (user_id, snapshot, rebuilt_at)
VALUES (%(user_id)s, %(snapshot)s::pg_snapshot, now())
ON CONFLICT (user_id) DO UPDATE SET snapshot = EXCLUDED.snapshot, rebuilt_at = EXCLUDED.rebuilt_at;

-- name: all_user_ids
SELECT user_id FROM user_profile ORDER BY user_id;

-- name: read_scores
SELECT content_type, signal_type, score, ref_time, event_count
FROM user_signal_scores WHERE user_id = %(user_id)s ORDER BY content_type, signal_type;

-- name: read_embedding
SELECT model, dim, raw_sum, ref_time, event_count, embedded_count, embedding
FROM user_embeddings WHERE user_id = %(user_id)s;

-- Batch path of the online learner: a batch's rows travel as one binary COPY into these
-- session-local tables (emptied at every commit), then one statement per table moves them.
-- Content and signal types travel as 1-based positions in the text arrays passed with the
-- statements (the rows then have a fixed width).

-- name: batch_tables
CREATE TEMP TABLE IF NOT EXISTS learner_batch_cells (
    cell INTEGER NOT NULL, user_id UUID NOT NULL, ct INTEGER NOT NULL, st INTEGER NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS learner_batch_scores (
    user_id UUID NOT NULL, ct INTEGER NOT NULL, st INTEGER NOT NULL, score DOUBLE PRECISION NOT NULL,
    ref_time TIMESTAMPTZ NOT NULL, event_count BIGINT NOT NULL, existed BOOLEAN NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS learner_batch_embeddings (
    user_id UUID NOT NULL, model INTEGER NOT NULL, dim INTEGER NOT NULL, raw_sum BYTEA NOT NULL,
    ref_time TIMESTAMPTZ NOT NULL, event_count BIGINT NOT NULL, embedded_count BIGINT NOT NULL,
    has_embedding BOOLEAN NOT NULL, embedding BYTEA NOT NULL, existed BOOLEAN NOT NULL
) ON COMMIT DELETE ROWS;

-- name: copy_batch_cells
COPY learner_batch_cells (cell, user_id, ct, st) FROM STDIN (FORMAT BINARY);

-- name: batch_cell_scores
-- The stored ones among the batch's cells, as one row of packed big-endian columns (one
-- value per cell found, all aggregates reading the join's rows in the same order): tens of
-- thousands of cells cost no row objects in the client.
SELECT string_agg(int4send(c.cell), ''::bytea) AS cells,
       string_agg(float8send(s.score), ''::bytea) AS scores,
       string_agg(timestamptz_send(s.ref_time), ''::bytea) AS ref_times,
       string_agg(int8send(s.event_count), ''::bytea) AS counts
FROM learner_batch_cells c
JOIN user_signal_scores s
  ON s.user_id = c.user_id
 AND s.content_type = (%(content_types)s::text[])[c.ct]
 AND s.signal_type = (%(signal_types)s::text[])[c.st];

-- name: copy_batch_scores
COPY learner_batch_scores (user_id, ct, st, score, ref_time, event_count, existed) FROM STDIN (FORMAT BINARY);

-- name: update_batch_scores
UPDATE user_signal_scores s
SET score = b.score, ref_time = b.ref_time, event_count = b.event_count, updated_at = now()
FROM learner_batch_scores b
WHERE b.existed
  AND s.user_id = b.user_id
  AND s.content_type = (%(content_types)s::text[])[b.ct]
  AND s.signal_type = (%(signal_types)s::text[])[b.st];

-- name: insert_batch_scores
-- New cells only (the batch read the user's cells under its lock); a conflict means the
-- state moved under the batch, which the caller turns into a retry.
INSERT INTO user_signal_scores (user_id, content_type, signal_type, score, ref_time, event_count, updated_at)
SELECT b.user_id, (%(content_types)s::text[])[b.ct], (%(signal_types)s::text[])[b.st], b.score, b.ref_time,
       b.event_count, now()
FROM learner_batch_scores b
WHERE NOT b.existed
ON CONFLICT (user_id, content_type, signal_type) DO NOTHING;

-- name: copy_batch_embeddings
COPY learner_batch_embeddings (user_id, model, dim, raw_sum, ref_time, event_count, embedded_count, has_embedding,
                               embedding, existed) FROM STDIN (FORMAT BINARY);

-- name: update_batch_embeddings
UPDATE user_embeddings e
SET model = (%(models)s::text[])[b.model], dim = b.dim, raw_sum = b.raw_sum, ref_time = b.ref_time,
    event_count = b.event_count, embedded_count = b.embedded_count,
    embedding = CASE WHEN b.has_embedding THEN b.embedding END, updated_at = now()
FROM learner_batch_embeddings b
WHERE b.existed AND e.user_id = b.user_id;

-- name: insert_batch_embeddings
INSERT INTO user_embeddings (user_id, model, dim, raw_sum, ref_time, event_count, embedded_count, embedding,
                             updated_at)
SELECT b.user_id, (%(models)s::text[])[b.model], b.dim, b.raw_sum, b.ref_time, b.event_count, b.embedded_count,
       CASE WHEN b.has_embedding THEN b.embedding END, now()
FROM learner_batch_embeddings b
WHERE NOT b.existed
ON CONFLICT (user_id) DO NOTHING;

-- name: load_embedding_blobs
-- The stored embedding rows of a batch's users, packed like batch_cell_scores (raw sums
-- concatenated; each is 8 * dim bytes).
SELECT string_agg(uuid_send(user_id), ''::bytea) AS user_ids,
       array_agg(model) AS models,
       string_agg(int4send(dim), ''::bytea) AS dims,
       string_agg(raw_sum, ''::bytea) AS raw_sums,
       string_agg(timestamptz_send(ref_time), ''::bytea) AS ref_times,
       string_agg(int8send(event_count), ''::bytea) AS counts,
       string_agg(int8send(embedded_count), ''::bytea) AS embedded_counts
FROM user_embeddings
WHERE user_id = ANY(%(user_ids)s);
