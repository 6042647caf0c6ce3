-- depends: 0200_feature_flags
-- Experiments (issue 15): phases of a flag's rules, first exposures of readers, metric
-- definitions.  Beside the specification's tables; nothing of them is renamed or retyped.

-- A phase is a run of rules versions that assign every reader to the same arm.  A rules
-- change that can move readers between arms (enabled, rollout_percent, conditions, salt,
-- overrides) starts a new phase; a change of the description alone does not.  Results are
-- computed per phase, so readers assigned under different rules are never compared.
CREATE TABLE experiment_phases (
    flag TEXT NOT NULL REFERENCES feature_flags(flag) ON DELETE CASCADE,
    phase INTEGER NOT NULL CHECK (phase >= 1),
    from_version BIGINT NOT NULL,
    enabled BOOLEAN NOT NULL,
    -- The expected share of the "on" arm among randomised readers (the SRM test's split).
    rollout_percent NUMERIC(5,2) NOT NULL,
    -- md5 of the assignment-relevant rules; equal fingerprints assign identically.
    fingerprint TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (flag, phase),
    UNIQUE (flag, from_version)
);

CREATE FUNCTION experiment_rules_fingerprint(f feature_flags) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT md5(jsonb_build_array(
        f.enabled, f.rollout_percent, f.conditions, COALESCE(f.salt, f.flag),
        COALESCE((SELECT jsonb_object_agg(o.user_id::text, o.enabled)
                  FROM feature_flag_overrides o WHERE o.flag = f.flag), '{}'::jsonb)
    )::text)
$$;

-- Runs at commit (deferred constraint trigger), after the overrides of the same
-- transaction are written, while the flag's row is still locked by the rules update:
-- concurrent rule changes of one flag are serialised and each sees the previous phase.
CREATE FUNCTION experiment_track_phase() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cur feature_flags;
    last experiment_phases;
    fp TEXT;
BEGIN
    SELECT * INTO cur FROM feature_flags WHERE flag = NEW.flag;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    fp := experiment_rules_fingerprint(cur);
    SELECT * INTO last FROM experiment_phases WHERE flag = cur.flag ORDER BY phase DESC LIMIT 1;
    IF NOT FOUND THEN
        INSERT INTO experiment_phases (flag, phase, from_version, enabled, rollout_percent, fingerprint)
        VALUES (cur.flag, 1, cur.version, cur.enabled, cur.rollout_percent, fp);
    ELSIF last.fingerprint <> fp AND last.from_version < cur.version THEN
        INSERT INTO experiment_phases (flag, phase, from_version, enabled, rollout_percent, fingerprint)
        VALUES (cur.flag, last.phase + 1, cur.version, cur.enabled, cur.rollout_percent, fp);
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER feature_flags_experiment_phase
    AFTER INSERT OR UPDATE ON feature_flags
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION experiment_track_phase();

-- The flags that exist already start their first phase at their current version.
INSERT INTO experiment_phases (flag, phase, from_version, enabled, rollout_percent, fingerprint)
SELECT f.flag, 1, f.version, f.enabled, f.rollout_percent, experiment_rules_fingerprint(f)
FROM feature_flags f;

-- The first time a reader was evaluated for a flag within a phase, and what it said.
-- Written once per (flag, phase, user) (INSERT ... ON CONFLICT DO NOTHING); later
-- evaluations leave the row alone.  Only ``reason = 'rollout'`` rows are randomised and
-- enter the results; overrides, untargeted readers and a disabled flag are recorded so
-- the history of what each reader was shown is complete.  A profile delete or an erase
-- removes the reader's rows (cascade; the erase sweeps every user_id table anyway).
CREATE TABLE experiment_exposures (
    flag TEXT NOT NULL,
    phase INTEGER NOT NULL,
    user_id UUID NOT NULL REFERENCES user_profile(user_id) ON DELETE CASCADE,
    variant TEXT NOT NULL CHECK (variant IN ('on', 'off')),
    reason TEXT NOT NULL,
    rules_version BIGINT NOT NULL,
    first_exposed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (flag, phase, user_id),
    FOREIGN KEY (flag, phase) REFERENCES experiment_phases (flag, phase) ON DELETE CASCADE
);

-- Erase, export and the cascade of a profile delete find a reader's rows by user.
CREATE INDEX experiment_exposures_user_idx ON experiment_exposures (user_id);
-- The first and last exposure of a phase (the time range of the events a result reads).
CREATE INDEX experiment_exposures_phase_time_idx ON experiment_exposures (flag, phase, first_exposed_at);

-- Metric definitions: what counts for a reader in [first exposure, + window_days).
CREATE TABLE experiment_metrics (
    name TEXT PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    signal_types TEXT[] NOT NULL CHECK (cardinality(signal_types) >= 1),
    -- NULL: every content type.
    content_types TEXT[] CHECK (content_types IS NULL OR cardinality(content_types) >= 1),
    aggregation TEXT NOT NULL CHECK (aggregation IN ('count', 'sum_weight', 'any')),
    window_days INTEGER NOT NULL CHECK (window_days BETWEEN 1 AND 365),
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
