-- depends: 0600_content_catalog 0300_learner
-- Recommendations (issue 16): trained artefacts, the catalogue version serving processes
-- poll, and a time index for trending.

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

-- Bumped by any change to the catalogue or its embeddings (statement triggers below), so
-- a serving process learns of a content import with one primary-key read, whoever
-- wrote it, and rebuilds its index without a restart.
CREATE TABLE recommend_catalog_version (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    version BIGINT NOT NULL
);
INSERT INTO recommend_catalog_version (singleton, version) VALUES (true, 1);

CREATE FUNCTION recommend_bump_catalog_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE recommend_catalog_version SET version = version + 1 WHERE singleton;
    RETURN NULL;
END
$$;

CREATE TRIGGER content_items_recommend_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON content_items
    FOR EACH STATEMENT EXECUTE FUNCTION recommend_bump_catalog_version();
CREATE TRIGGER content_embeddings_recommend_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON content_embeddings
    FOR EACH STATEMENT EXECUTE FUNCTION recommend_bump_catalog_version();

-- Trending and popularity read a recent window of events; a BRIN index on the
-- append-ordered time column costs ingest almost nothing.
CREATE INDEX personalization_events_time_brin ON personalization_events USING brin (occurred_at);
