-- Content catalogue and content embeddings (beside the specification's tables).

-- What the app can recommend: passages, devotionals, plan days.  ``body`` keeps
-- the text (or its opening) so a recommendation can be shown without another
-- service.
CREATE TABLE content_items (
    content_id TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    title TEXT,
    body TEXT,
    metadata JSONB,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One embedding per content id, float32 little-endian bytes (the same encoding
-- as the spec's ``user:{user_id}:embedding``).  No foreign key to content_items:
-- embeddings may be imported before (or without) the catalogue.
CREATE TABLE content_embeddings (
    content_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL CHECK (dim > 0),
    embedding BYTEA NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT content_embeddings_length CHECK (octet_length(embedding) = 4 * dim)
);
