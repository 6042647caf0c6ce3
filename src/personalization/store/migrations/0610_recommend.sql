-- depends: 0601_catalog_version 0300_learner
-- Recommendations (issue 16): trained artefacts and a time index for trending.  Serving
-- processes poll the artefact versions here and the catalogue's durable version of
-- 0601_catalog_version (raised by every content import).

-- One row per artefact kind ('cf': ALS item factors, 'neighbours': co-engagement lists),
-- replaced by each nightly training.  ``artefact`` is an .npz (numpy arrays, no pickles)
-- keyed by passage; every API process loads the same version.
CREATE TABLE recommend_models (
    kind TEXT PRIMARY KEY CHECK (kind IN ('cf', 'neighbours')),
    version BIGINT NOT NULL CHECK (version > 0),
    trained_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- events strictly before this instant were trained on
    trained_until TIMESTAMPTZ NOT NULL,
    params JSONB NOT NULL DEFAULT '{}'::jsonb,
    artefact BYTEA NOT NULL
);
-- Floats do not compress: skip pglz's attempt.
ALTER TABLE recommend_models ALTER COLUMN artefact SET STORAGE EXTERNAL;
CREATE SEQUENCE recommend_model_version_seq;

-- Trending and popularity read a recent window of events; a BRIN index on the
-- append-ordered time column costs ingest almost nothing.
CREATE INDEX personalization_events_time_brin ON personalization_events USING brin (occurred_at);
