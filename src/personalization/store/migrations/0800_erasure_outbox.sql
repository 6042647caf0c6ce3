-- depends: 0500_security
-- Erase outbox (issue 17): what an erase cannot finish inside its request, recorded in the
-- erase's own transaction and completed by the erasure worker (datarights/worker.py).
--
-- subject_id is the erased user's id, kept only while a part that needs it is pending (the
-- Kafka tombstones' key, the re-delete of the Redis keys) and set NULL when the erasure
-- completes.  It is deliberately not called user_id: the erase's catalogue sweep deletes
-- from every table with a uuid user_id column, and an erasure must survive the next erase
-- of the same id.  redis_keys are the key names the request deleted (the user's families
-- and the sessions' lists), cleared on completion too.
CREATE TABLE erasures (
    erasure_id UUID PRIMARY KEY,
    subject_hash TEXT NOT NULL,
    subject_id UUID,
    redis_keys TEXT[],
    actor TEXT NOT NULL,
    audit_id BIGINT REFERENCES audit_log(audit_id) ON DELETE SET NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    CHECK (completed_at IS NULL OR (subject_id IS NULL AND redis_keys IS NULL))
);

CREATE INDEX erasures_subject_idx ON erasures (subject_hash);
-- The workers' "how many are pending" (a gauge, every poll) stays cheap however many
-- erasures were ever made; completed rows stay as the record of each erasure (no user id).
CREATE INDEX erasures_pending_idx ON erasures (requested_at) WHERE completed_at IS NULL;

-- One row per part of an erasure.  postgres: done in the request's transaction.  redis:
-- deleted in the request (before and after the commit); pending only until the request's
-- second delete, so a process killed in between leaves it to the worker.  rollups: the
-- spec's materialized view, which only a refresh changes (one refresh for every erasure
-- pending at that moment).  kafka: tombstones on the CDC topics, retried until the broker
-- acknowledges them.
CREATE TABLE erasure_parts (
    erasure_id UUID NOT NULL REFERENCES erasures(erasure_id) ON DELETE CASCADE,
    part TEXT NOT NULL CHECK (part IN ('postgres', 'redis', 'rollups', 'kafka')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'not_needed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error TEXT,
    done_at TIMESTAMPTZ,
    PRIMARY KEY (erasure_id, part)
);

CREATE INDEX erasure_parts_pending_idx ON erasure_parts (part, next_attempt_at) WHERE state = 'pending';
