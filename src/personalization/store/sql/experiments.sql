-- Queries of experiments: exposures, phases, metric definitions, results aggregates.

-- name: insert_exposures
-- One group commit of first exposures.  The readers' profiles are locked FOR KEY SHARE
-- (a concurrent delete waits, or has already removed the reader, who is then skipped);
-- the phase is the one whose rules version range holds the evaluated version; an
-- exposure recorded before in the same phase stays as it is.
WITH x AS (
    SELECT *
    FROM unnest(%(flags)s::text[], %(user_ids)s::uuid[], %(variants)s::text[], %(reasons)s::text[],
                %(versions)s::bigint[], %(exposed_at)s::timestamptz[])
         AS x(flag, user_id, variant, reason, rules_version, first_exposed_at)
), u AS (
    SELECT user_id FROM user_profile WHERE user_id = ANY(%(user_ids)s::uuid[]) FOR KEY SHARE
)
INSERT INTO experiment_exposures (flag, phase, user_id, variant, reason, rules_version, first_exposed_at)
SELECT x.flag, p.phase, x.user_id, x.variant, x.reason, x.rules_version, x.first_exposed_at
FROM x
JOIN u ON u.user_id = x.user_id
JOIN LATERAL (
    SELECT ph.phase FROM experiment_phases ph
    WHERE ph.flag = x.flag AND ph.from_version <= x.rules_version
    ORDER BY ph.phase DESC LIMIT 1
) p ON true
ORDER BY x.first_exposed_at
ON CONFLICT (flag, phase, user_id) DO NOTHING;

-- name: flag_exists
SELECT EXISTS (SELECT 1 FROM feature_flags WHERE flag = %(flag)s) AS present;

-- name: phases
-- Every phase of a flag with the versions it spans and its exposure count.
SELECT ph.phase, ph.from_version, ph.enabled, ph.rollout_percent::float8 AS rollout_percent, ph.started_at,
       lead(ph.from_version) OVER (ORDER BY ph.phase) - 1 AS to_version,
       lead(ph.started_at) OVER (ORDER BY ph.phase) AS ended_at
FROM experiment_phases ph
WHERE ph.flag = %(flag)s
ORDER BY ph.phase;

-- name: exposure_counts
SELECT phase, variant, reason, count(*) AS users, min(first_exposed_at) AS first_at,
       max(first_exposed_at) AS last_at
FROM experiment_exposures
WHERE flag = %(flag)s
GROUP BY phase, variant, reason
ORDER BY phase, variant, reason;

-- name: put_metric
INSERT INTO experiment_metrics (name, signal_types, content_types, aggregation, window_days, description)
VALUES (%(name)s, %(signal_types)s, %(content_types)s, %(aggregation)s, %(window_days)s, %(description)s)
ON CONFLICT (name) DO UPDATE SET
    signal_types = EXCLUDED.signal_types,
    content_types = EXCLUDED.content_types,
    aggregation = EXCLUDED.aggregation,
    window_days = EXCLUDED.window_days,
    description = EXCLUDED.description,
    updated_at = now()
RETURNING name, signal_types, content_types, aggregation, window_days, description, created_at, updated_at,
          (xmax = 0) AS created;

-- name: get_metric
SELECT name, signal_types, content_types, aggregation, window_days, description, created_at, updated_at
FROM experiment_metrics WHERE name = %(name)s;

-- name: list_metrics
SELECT name, signal_types, content_types, aggregation, window_days, description, created_at, updated_at
FROM experiment_metrics ORDER BY name;

-- name: delete_metric
DELETE FROM experiment_metrics WHERE name = %(name)s;

-- name: phase_event_range
-- The events a result of the phase can read: from the first exposure minus the window to
-- the last exposure plus the window (two index lookups).  Passed to metric_aggregates as
-- values, so the planner estimates the events it keeps (years of history, one experiment).
SELECT min(first_exposed_at) - make_interval(days => %(window_days)s::int) AS lo,
       max(first_exposed_at) + make_interval(days => %(window_days)s::int) AS hi
FROM experiment_exposures
WHERE flag = %(flag)s AND phase = %(phase)s;

-- name: metric_aggregates
-- Per arm of one phase: randomised readers, and over their per-reader metric value y
-- (events in [first exposure, + window)) and covariate x (the same metric over
-- [first exposure - window, first exposure)) the sums, sums of squares and the cross
-- product.  Readers without a matching event count in ``users`` with y = x = 0, which add
-- nothing to the sums, so the event join only needs the readers who have events: one
-- (parallel) hash join of the phase's exposures with the events of the metric's signal
-- types in the phase's time range, two sums per reader (after and before the exposure;
-- ``v`` is 1 per event, or its weight for ``sum_weight``), then per arm.  The exposures are
-- read twice (the counts) rather than through a materialised CTE, which would hide their
-- statistics from the planner and turn the join into two large sorts.
WITH per_user AS (
    SELECT x.variant,
           sum(e.v) FILTER (WHERE e.occurred_at >= x.first_exposed_at) AS post,
           sum(e.v) FILTER (WHERE e.occurred_at < x.first_exposed_at) AS pre
    FROM experiment_exposures x
    JOIN (
        SELECT user_id, occurred_at,
               CASE WHEN %(aggregation)s = 'sum_weight' THEN signal_weight::float8 ELSE 1.0::float8 END AS v
        FROM personalization_events
        WHERE signal_type = ANY(%(signal_types)s::text[])
          AND occurred_at >= %(lo)s::timestamptz AND occurred_at < %(hi)s::timestamptz
          AND (%(content_types)s::text[] IS NULL OR content_type = ANY(%(content_types)s::text[]))
    ) e ON e.user_id = x.user_id
    WHERE x.flag = %(flag)s AND x.phase = %(phase)s AND x.reason = 'rollout'
      AND e.occurred_at >= x.first_exposed_at - make_interval(days => %(window_days)s::int)
      AND e.occurred_at < x.first_exposed_at + make_interval(days => %(window_days)s::int)
    GROUP BY x.user_id, x.variant
), v AS (
    SELECT variant,
           CASE WHEN %(aggregation)s = 'any' THEN (post > 0)::int::float8 ELSE COALESCE(post, 0) END AS y,
           CASE WHEN %(aggregation)s = 'any' THEN (pre > 0)::int::float8 ELSE COALESCE(pre, 0) END AS c
    FROM per_user
), sums AS (
    SELECT variant, sum(y) AS sum_y, sum(y * y) AS sum_y2, sum(c) AS sum_x, sum(c * c) AS sum_x2,
           sum(y * c) AS sum_xy
    FROM v GROUP BY variant
), counts AS (
    SELECT variant, count(*) AS users FROM experiment_exposures
    WHERE flag = %(flag)s AND phase = %(phase)s AND reason = 'rollout'
    GROUP BY variant
)
SELECT counts.variant, counts.users,
       COALESCE(sums.sum_y, 0) AS sum_y, COALESCE(sums.sum_y2, 0) AS sum_y2,
       COALESCE(sums.sum_x, 0) AS sum_x, COALESCE(sums.sum_x2, 0) AS sum_x2,
       COALESCE(sums.sum_xy, 0) AS sum_xy
FROM counts LEFT JOIN sums ON sums.variant = counts.variant
ORDER BY counts.variant;
