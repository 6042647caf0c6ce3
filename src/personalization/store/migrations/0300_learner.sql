-- depends: 0003_content
-- Online learner (issue 4): per-user time-decayed state kept by ``personalization learner run``
-- from the CDC topic of personalization_events, beside the specification's objects.
--
-- Every per-user table references user_profile ON DELETE CASCADE: deleting (or erasing) a
-- user removes the learner's state in the same transaction.  Only users whose privacy
-- level permits personalization (core.privacy) have learner state at all.

-- Decayed score per (user, content_type, signal_type): ``score`` is the value at
-- ``ref_time`` (the latest occurred_at counted), see personalization.core.decay.
CREATE TABLE user_signal_scores (
    user_id UUID NOT NULL REFERENCES user_profile(user_id) ON DELETE CASCADE,
    content_type TEXT NOT NULL,
    signal_type TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    ref_time TIMESTAMPTZ NOT NULL,
    event_count BIGINT NOT NULL CHECK (event_count >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, content_type, signal_type)
);

-- The user's embedding: ``raw_sum`` (float64 little-endian, 8 * dim bytes) is the decayed,
-- weighted sum of unit content vectors at ``ref_time``; ``embedding`` is that sum
-- L2-normalised as float32 little-endian (4 * dim bytes), NULL while no content with a
-- vector was counted (or the sum cancelled out).  The read path's login pre-warm reads
-- ``dim`` and ``embedding``.  Only users whose privacy level permits personalization
-- have a row.
CREATE TABLE user_embeddings (
    user_id UUID PRIMARY KEY REFERENCES user_profile(user_id) ON DELETE CASCADE,
    model TEXT,
    dim INTEGER NOT NULL CHECK (dim > 0),
    raw_sum BYTEA NOT NULL,
    ref_time TIMESTAMPTZ NOT NULL,
    -- events counted / of those, events whose content had a usable vector
    event_count BIGINT NOT NULL CHECK (event_count >= 0),
    embedded_count BIGINT NOT NULL CHECK (embedded_count >= 0),
    embedding BYTEA,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT user_embeddings_raw_length CHECK (octet_length(raw_sum) = 8 * dim),
    CONSTRAINT user_embeddings_length CHECK (embedding IS NULL OR octet_length(embedding) = 4 * dim)
);

-- Random floats do not compress: skip pglz's attempt (both values are stored out of line).
ALTER TABLE user_embeddings ALTER COLUMN raw_sum SET STORAGE EXTERNAL;
ALTER TABLE user_embeddings ALTER COLUMN embedding SET STORAGE EXTERNAL;

-- Redis resync after a restart looks at recently changed rows.
CREATE INDEX user_embeddings_updated_idx ON user_embeddings (updated_at);

-- A recomputation from personalization_events records the snapshot it read; the online
-- learner then skips stream records of transactions visible in it (already counted).
-- One row per user, replaced by every recomputation: bounded.
CREATE TABLE learner_rebuilds (
    user_id UUID PRIMARY KEY REFERENCES user_profile(user_id) ON DELETE CASCADE,
    snapshot pg_snapshot NOT NULL,
    rebuilt_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Consumed position per learner group / topic / partition, committed in the same
-- transaction as the state it produced.  ``next_offset`` is where the consumer seeks on
-- assignment; (hw_commit_lsn, hw_lsn, hw_event_id) is the highest Debezium source
-- position applied, used to drop records the at-least-once relay sent again.
CREATE TABLE learner_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL CHECK (partition >= 0),
    next_offset BIGINT NOT NULL CHECK (next_offset >= 0),
    hw_commit_lsn BIGINT,
    hw_lsn BIGINT,
    hw_event_id BIGINT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
