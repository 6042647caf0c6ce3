-- depends: 0001_spec_schema
-- Feature flag rollout rules (beside the specification's tables).  The evaluation
-- result of one user is cached under the spec's ``feature_flag:{flag}:{user_id}``;
-- ``version`` grows with every rule change and is folded into the cached value, so
-- a change reaches every user at once instead of after the 24 h TTL.

CREATE TABLE feature_flags (
    flag TEXT PRIMARY KEY CHECK (flag ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    enabled BOOLEAN NOT NULL DEFAULT false,
    rollout_percent NUMERIC(5,2) NOT NULL DEFAULT 0 CHECK (rollout_percent BETWEEN 0 AND 100),
    -- [{"attribute": "denomination" | "trait.<type>", "op": "in" | "not_in", "values": [...]}]
    conditions JSONB NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(conditions) = 'array'),
    salt TEXT,
    description TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Per-user overrides; an erased user's overrides go with the profile.
CREATE TABLE feature_flag_overrides (
    flag TEXT NOT NULL REFERENCES feature_flags(flag) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES user_profile(user_id) ON DELETE CASCADE,
    enabled BOOLEAN NOT NULL,
    PRIMARY KEY (flag, user_id)
);

CREATE INDEX feature_flag_overrides_user_idx ON feature_flag_overrides (user_id);

-- The specification's own flag: the rollout toggle of personalization itself.
-- It starts on for everyone; operators narrow it with PUT /v1/flags/personalization.
INSERT INTO feature_flags (flag, enabled, rollout_percent, description)
VALUES ('personalization', true, 100, 'Personalized reranking (users outside get the non-personalized order)');
