-- depends: 0002_write_path_support
-- Feature store (issue 5): dated snapshots of user_signal_rollups, their catalogue and the
-- ledger of nightly runs.  Beside the specification's objects, never changing them.

CREATE SCHEMA IF NOT EXISTS feature_store;

-- One partition per snapshot date: a date's snapshot is replaced by attaching a fully built
-- table in the transaction that drops the old one (readers see the old or the new, never a
-- mix), and retention drops whole partitions instead of deleting rows.  Only users whose
-- privacy level permits personalization appear (see personalization.nightly); anonymous
-- rollups (user_id NULL) are not user features and are left out.
CREATE TABLE feature_store.user_signal_features (
    as_of DATE NOT NULL,
    user_id UUID NOT NULL,
    content_type TEXT NOT NULL,
    signal_type TEXT NOT NULL,
    event_count BIGINT NOT NULL,
    total_weight NUMERIC NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    -- personalization.core.decay score of the group's events at snapshots.as_of_ts.
    decayed_weight DOUBLE PRECISION NOT NULL,
    -- user_id first: point-in-time lookups and erasure go by user inside each partition.
    PRIMARY KEY (user_id, content_type, signal_type, as_of)
) PARTITION BY LIST (as_of);

-- One row per snapshot that exists.  computed_at is when the data was read (the refresh's
-- transaction snapshot), so a snapshot can only be joined to entity timestamps at or after
-- the moment its values were known: the point-in-time key.  as_of_ts is the decay
-- reference time (the start of the as_of day in the job's time zone).
CREATE TABLE feature_store.snapshots (
    as_of DATE PRIMARY KEY,
    as_of_ts TIMESTAMPTZ NOT NULL,
    computed_at TIMESTAMPTZ NOT NULL,
    row_count BIGINT NOT NULL,
    run_id BIGINT NOT NULL
);
CREATE INDEX snapshots_computed_at_idx ON feature_store.snapshots (computed_at);

-- Ledger: one row per attempted run, written before the work starts (status 'running') so
-- a run killed mid-way is still visible; the next run marks it 'failed'.
CREATE TABLE feature_store.nightly_runs (
    run_id BIGSERIAL PRIMARY KEY,
    as_of DATE NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at TIMESTAMPTZ,
    row_count BIGINT,
    dropped_snapshots INTEGER,
    error TEXT,
    backend_pid INTEGER
);
CREATE INDEX nightly_runs_as_of_idx ON feature_store.nightly_runs (as_of, status);
