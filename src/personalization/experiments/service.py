"""The experiments use cases: metric definitions, an experiment's phases, and its results.

Results are computed in two steps: PostgreSQL aggregates per arm next to the data (one
statement over the phase's exposures and the readers' events, see ``metric_aggregates``
in store/sql/experiments.sql), then :func:`personalization.experiments.stats.analyse`
turns the dozen numbers into the uplift, its interval and p-value, the SRM p-value and
the chance to win.
"""

from __future__ import annotations

import re
from typing import Any

from personalization.core.experiments import METRIC_NAME_PATTERN, Metric, MetricIn
from personalization.core.flags import FLAG_NAME_PATTERN
from personalization.errors import FieldError, InvalidInput, NotFound
from personalization.experiments.stats import ALPHA, ArmMoments, analyse
from personalization.store.experiments import ExperimentStore

_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)
_FLAG_NAME = re.compile(FLAG_NAME_PATTERN)


def check_metric_name(name: str, loc: list[str | int]) -> None:
    """InvalidInput naming ``loc`` unless ``name`` is a valid metric name."""
    if not _METRIC_NAME.fullmatch(name):
        raise InvalidInput([FieldError(loc, f"must match {METRIC_NAME_PATTERN}", "string_pattern_mismatch")])


def _metric_not_found(name: str, loc: list[str | int]) -> InvalidInput:
    return InvalidInput([FieldError(loc, f"metric {name} not found", "not_found")], 404)


def _arm(variant: str, rows: dict[str, dict[str, Any]]) -> ArmMoments:
    r = rows.get(variant)
    if r is None:
        return ArmMoments(variant, 0, 0.0, 0.0)
    return ArmMoments(
        variant,
        int(r["users"]),
        float(r["sum_y"]),
        float(r["sum_y2"]),
        float(r["sum_x"]),
        float(r["sum_x2"]),
        float(r["sum_xy"]),
    )


class ExperimentService:
    """Metrics CRUD and experiment results over the exposures of the flags."""

    def __init__(self, store: ExperimentStore) -> None:
        self.store = store

    # ---- metrics ---------------------------------------------------------------
    async def put_metric(self, name: str, body: MetricIn) -> tuple[Metric, bool]:
        """Create or replace a metric; returns (metric, created)."""
        check_metric_name(name, ["path", "name"])
        row, created = await self.store.put_metric(name, body)
        return Metric.model_validate(row), created

    async def get_metric(self, name: str, loc: list[str | int] | None = None) -> Metric:
        """The metric called ``name``; a 404 naming ``loc`` (default the path's name) if there is none."""
        where = loc or ["path", "name"]
        check_metric_name(name, where)
        row = await self.store.get_metric(name)
        if row is None:
            raise _metric_not_found(name, where)
        return Metric.model_validate(row)

    async def list_metrics(self) -> list[Metric]:
        return [Metric.model_validate(r) for r in await self.store.list_metrics()]

    async def delete_metric(self, name: str) -> None:
        check_metric_name(name, ["path", "name"])
        if not await self.store.delete_metric(name):
            raise _metric_not_found(name, ["path", "name"])

    # ---- experiments -----------------------------------------------------------
    async def _check_flag(self, flag: str) -> None:
        if not _FLAG_NAME.fullmatch(flag):
            raise InvalidInput(
                [FieldError(["path", "flag"], f"must match {FLAG_NAME_PATTERN}", "string_pattern_mismatch")]
            )
        if not await self.store.flag_exists(flag):
            raise NotFound("flag", "flag", flag)

    async def summary(self, flag: str) -> dict[str, Any]:
        """The flag's phases with their exposure counts per variant and reason."""
        await self._check_flag(flag)
        phases = await self.store.phases(flag)
        counts = await self.store.exposure_counts(flag)
        out = []
        for ph in phases:
            mine = [c for c in counts if c["phase"] == ph["phase"]]
            out.append(
                {
                    "phase": ph["phase"],
                    "rules_versions": [ph["from_version"], ph["to_version"]],
                    "enabled": ph["enabled"],
                    "rollout_percent": ph["rollout_percent"],
                    "started_at": ph["started_at"].isoformat(),
                    "ended_at": ph["ended_at"].isoformat() if ph["ended_at"] else None,
                    "exposures": [
                        {"variant": c["variant"], "reason": c["reason"], "users": c["users"]} for c in mine
                    ],
                }
            )
        return {"flag": flag, "phases": out}

    async def results(
        self, flag: str, metric_name: str, *, phase: int | None = None, cuped: bool = False
    ) -> dict[str, Any]:
        """The results of ``metric_name`` in one phase of ``flag`` (default: the current phase)."""
        await self._check_flag(flag)
        metric = await self.get_metric(metric_name, ["query", "metric"])
        phases = await self.store.phases(flag)
        if not phases:  # only a flag whose phase rows were deleted by hand
            raise NotFound("flag", "flag", flag)
        chosen = phases[-1] if phase is None else next((p for p in phases if p["phase"] == phase), None)
        if chosen is None:
            raise InvalidInput(
                [FieldError(["query", "phase"], f"flag {flag} has phases 1..{len(phases)}", "not_found")], 404
            )
        rows = {r["variant"]: r for r in await self.store.metric_aggregates(flag, chosen["phase"], metric)}
        on_share = float(chosen["rollout_percent"]) / 100.0
        analysis = analyse(_arm("off", rows), _arm("on", rows), on_share=on_share, cuped=cuped)
        return {
            "flag": flag,
            "metric": metric.name,
            "phase": chosen["phase"],
            "phase_started_at": chosen["started_at"].isoformat(),
            "rules_versions": [chosen["from_version"], chosen["to_version"]],
            "expected_split": {"off": 1.0 - on_share, "on": on_share},
            "aggregation": metric.aggregation,
            "window_days": metric.window_days,
            "cuped": cuped,
            "alpha": ALPHA,
            **analysis.as_dict(),
        }
