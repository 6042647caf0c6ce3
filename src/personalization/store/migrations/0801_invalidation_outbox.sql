-- depends: 0001_spec_schema
-- Invalidation outbox (issue 17): every profile or trait change inserts a row here in its own
-- transaction.  The process that made the change deletes the row once the invalidation
-- reached Redis; while Redis is unreachable (or after a crash) the row stays and the
-- invalidation replay of any API process (or `personalization workers run invalidations`)
-- applies and deletes it.  No foreign key: a deleted profile needs its invalidation too.
-- user_id is a uuid column on purpose: an erase's catalogue sweep deletes the user's rows
-- (the erase deletes the cached keys itself).
CREATE TABLE cache_invalidations (
    invalidation_id BIGSERIAL PRIMARY KEY,
    user_id UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX cache_invalidations_user_idx ON cache_invalidations (user_id);
