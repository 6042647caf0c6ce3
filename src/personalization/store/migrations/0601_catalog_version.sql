-- depends: 0600_content_catalog
-- The catalogue's version (issue 16): one row, raised by every successful
-- `personalization content import` in the import's own transaction, so a process
-- that holds an index built from content_items / content_embeddings can tell, with
-- one primary-key read, whether the catalogue changed since it built it (Redis's
-- content version is only a fast hint and may be lost; this one is durable).
CREATE TABLE catalog_version (
    -- Always TRUE: the table holds exactly one row.
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version BIGINT NOT NULL CHECK (version >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO catalog_version (singleton, version) VALUES (TRUE, 0);
