-- Copy of the SQL block of the data contract (docs/schema.md; the specification it came from)
-- (tests/test_schema_conformance.py checks it still matches when shared/ is present).
-- Core user profile
CREATE TABLE user_profile (
    user_id UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    denomination TEXT,
    spiritual_goal TEXT,
    preferred_translation TEXT,
    timezone TEXT,
    privacy_level TEXT DEFAULT 'standard'
);

-- Long-lived traits and preferences sourced from onboarding
CREATE TABLE user_traits (
    trait_id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES user_profile(user_id) ON DELETE CASCADE,
    trait_type TEXT NOT NULL, -- e.g. "learning_style", "content_format"
    trait_value JSONB NOT NULL,
    confidence NUMERIC(3,2) NOT NULL DEFAULT 0.80,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Time-decayed interaction signals captured from product events
CREATE TABLE personalization_events (
    event_id BIGSERIAL PRIMARY KEY,
    user_id UUID REFERENCES user_profile(user_id) ON DELETE SET NULL,
    session_id UUID,
    content_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    signal_type TEXT NOT NULL, -- e.g. "bookmark", "share", "skip"
    signal_weight NUMERIC(4,3) NOT NULL,
    metadata JSONB,
    occurred_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX personalization_events_user_time_idx
    ON personalization_events (user_id, occurred_at DESC);

-- Rolling aggregates to support personalization models
CREATE MATERIALIZED VIEW user_signal_rollups AS
SELECT
    user_id,
    content_type,
    signal_type,
    COUNT(*) AS event_count,
    SUM(signal_weight) AS total_weight,
    MAX(occurred_at) AS last_seen_at
FROM personalization_events
GROUP BY 1,2,3;
