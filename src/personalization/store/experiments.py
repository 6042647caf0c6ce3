"""PostgreSQL side of experiments: exposures, phases, metric definitions, results aggregates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import dict_row

from personalization.core.experiments import Exposure, MetricIn
from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

_SQL = "experiments.sql"


def _q(name: str) -> str:
    return q(name, _SQL)


class ExperimentStore:
    """Reads and writes of the experiments tables."""

    def __init__(self, db: Database, *, results_work_mem: str = "256MB") -> None:
        self.db = db
        # The per-reader aggregation of a large experiment hashes up to one entry per
        # exposed reader; with the default 4 MB it would spill to disk.
        self.results_work_mem = results_work_mem

    async def insert_exposures(self, exposures: Sequence[Exposure]) -> int:
        """Insert first exposures in one statement (existing ones are kept); returns how many were new."""
        if not exposures:
            return 0
        params = {
            "flags": [e.flag for e in exposures],
            "user_ids": [e.user_id for e in exposures],
            "variants": [e.variant for e in exposures],
            "reasons": [e.reason for e in exposures],
            "versions": [e.rules_version for e in exposures],
            "exposed_at": [e.exposed_at for e in exposures],
        }
        async with self.db.connection() as conn, conn.cursor() as cur:
            with wrap_exceptions():
                await cur.execute(_q("insert_exposures"), params)
                return max(cur.rowcount, 0)

    async def flag_exists(self, flag: str) -> bool:
        row = await self.db.fetch_one(_q("flag_exists"), {"flag": flag})
        return bool(row and row["present"])

    async def phases(self, flag: str) -> list[dict[str, Any]]:
        """The flag's phases, oldest first: phase, from_version, to_version (None: current), split."""
        return await self.db.fetch_all(_q("phases"), {"flag": flag})

    async def exposure_counts(self, flag: str) -> list[dict[str, Any]]:
        """Readers per (phase, variant, reason) with the first and last exposure times."""
        return await self.db.fetch_all(_q("exposure_counts"), {"flag": flag})

    async def put_metric(self, name: str, body: MetricIn) -> tuple[dict[str, Any], bool]:
        """Create or replace a metric definition; returns (row, created)."""
        row = await self.db.fetch_one(
            _q("put_metric"),
            {
                "name": name,
                "signal_types": list(body.signal_types),
                "content_types": list(body.content_types) if body.content_types is not None else None,
                "aggregation": body.aggregation,
                "window_days": body.window_days,
                "description": body.description,
            },
        )
        assert row is not None
        created = bool(row.pop("created"))
        return row, created

    async def get_metric(self, name: str) -> dict[str, Any] | None:
        return await self.db.fetch_one(_q("get_metric"), {"name": name})

    async def list_metrics(self) -> list[dict[str, Any]]:
        return await self.db.fetch_all(_q("list_metrics"), {})

    async def delete_metric(self, name: str) -> bool:
        async with self.db.connection() as conn, conn.cursor() as cur:
            with wrap_exceptions():
                await cur.execute(_q("delete_metric"), {"name": name})
                return cur.rowcount > 0

    async def metric_aggregates(self, flag: str, phase: int, metric: MetricIn) -> list[dict[str, Any]]:
        """Per variant of the phase: users, sum_y, sum_y2, sum_x, sum_x2, sum_xy (see the SQL)."""
        params: dict[str, Any] = {
            "flag": flag,
            "phase": phase,
            "window_days": metric.window_days,
            "signal_types": list(metric.signal_types),
            "content_types": list(metric.content_types) if metric.content_types is not None else None,
            "aggregation": metric.aggregation,
        }
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute("SELECT set_config('work_mem', %s, true)", (self.results_work_mem,))
                # JIT compiling this statement costs ~1 s (measured on 1M exposures), more
                # than the expressions it would speed up.
                await cur.execute("SELECT set_config('jit', 'off', true)")
                await cur.execute(_q("phase_event_range"), params)
                bounds = await cur.fetchone()
                if bounds is None or bounds["lo"] is None:
                    return []  # nobody exposed in the phase
                params.update(lo=bounds["lo"], hi=bounds["hi"])
                # Never a prepared generic plan: the time range and the sizes differ per call.
                await cur.execute(_q("metric_aggregates"), params, prepare=False)
                return await cur.fetchall()
