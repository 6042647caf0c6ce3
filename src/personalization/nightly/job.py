"""The nightly job (issue 5); its schedule is in ``nightly/scheduler.py``, the point-in-time
feature export in ``nightly/export.py``.

``NightlyJob.run(as_of)`` refreshes ``user_signal_rollups`` without blocking its readers and
copies it into ``feature_store.user_signal_features`` as the snapshot of ``as_of``, with the
decayed weight of each row at ``as_of_ts`` computed by the SQL form of
:mod:`personalization.core.decay`.

Refresh modes (``PERSONALIZATION_NIGHTLY_REFRESH_MODE``):

* ``swap`` (default): the view's own query is materialized beside it and swapped in by a
  short transaction whose lock wait is bounded (``..._SWAP_LOCK_TIMEOUT_MS``, retried
  ``..._SWAP_ATTEMPTS`` times); readers keep reading the old rows during the rebuild and
  wait at most that bound at the swap.  If the lock never comes (a reader holding the view
  for minutes), or a view of the user's depends on the rollups, the run falls back to
  ``concurrently``.
* ``concurrently``: ``REFRESH MATERIALIZED VIEW CONCURRENTLY``; never blocks a reader, but
  PostgreSQL's duplicate check and diff make it ~4x slower than the aggregate.

Dates and times:

* ``as_of`` is a calendar date in the job's time zone (``PERSONALIZATION_NIGHTLY_TIMEZONE``);
  by default today's.  ``as_of_ts``, the decay reference time, is the start of that day.
* ``computed_at`` is when the snapshot's data was read.  Point-in-time export joins an
  entity at time ``t`` with the snapshot of greatest ``computed_at <= t``: a value is used
  only from the moment it was known, so a snapshot never leaks into rows before it, even
  when an old date is re-run later.

Privacy: rollup rows of users whose level does not permit personalization ('limited',
'private', and unknown levels, which fail closed) are not copied, anonymous rollups
(``user_id`` NULL) neither; export also leaves features empty for users whose *current*
level forbids personalization, since a snapshot may predate their change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import Counter, Gauge, Histogram

from personalization.config import NightlySettings
from personalization.core.decay import DecayConfig
from personalization.core.privacy import DEFAULT_PRIVACY_LEVEL, POLICIES
from personalization.errors import Conflict, FieldError, InvalidInput
from personalization.store.nightly import NightlyStore, PrivacyFilter, SwapPolicy

log = logging.getLogger("personalization.nightly.job")

NIGHTLY_RUNS = Counter("personalization_nightly_runs_total", "Nightly job runs by outcome", ["status"])
NIGHTLY_SECONDS = Histogram(
    "personalization_nightly_duration_seconds",
    "Duration of a successful nightly run (refresh + copy + swap)",
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
NIGHTLY_ROWS = Gauge("personalization_nightly_snapshot_rows", "Rows in the snapshot written by the last run")
NIGHTLY_LAST_SUCCESS = Gauge(
    "personalization_nightly_last_success_timestamp_seconds", "Unix time of the last successful nightly run"
)


def swap_policy(settings: NightlySettings) -> SwapPolicy:
    """How the rebuilt rollup view is swapped in (settings.nightly.swap_*)."""
    return SwapPolicy(lock_timeout_ms=settings.swap_lock_timeout_ms, attempts=settings.swap_attempts)


class NightlyRunning(Conflict):
    """Another nightly run holds the lock."""


def privacy_filter() -> PrivacyFilter:
    """The stored privacy levels that permit personalized features (from core.privacy)."""
    levels = tuple(sorted(name for name, p in POLICIES.items() if p.personalize))
    return PrivacyFilter(levels=levels, null_ok=POLICIES[DEFAULT_PRIVACY_LEVEL].personalize)


def as_of_start(as_of: date, tz: ZoneInfo) -> datetime:
    """The decay reference time of a snapshot: midnight at the start of ``as_of`` in ``tz``."""
    return datetime.combine(as_of, dtime(0), tzinfo=tz)


def parse_as_of(value: str | date | None, settings: NightlySettings, now: datetime | None = None) -> date:
    """Validate ``--as-of``: an ISO date, not in the future, not already past retention."""
    today = (now or datetime.now(UTC)).astimezone(settings.tz).date()
    if value is None:
        return today
    if isinstance(value, date):
        d = value
    else:
        try:
            d = date.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput([FieldError(["as_of"], f"not a date (YYYY-MM-DD): {value!r}")]) from None
    if d > today:
        raise InvalidInput([FieldError(["as_of"], f"{d} is in the future (today is {today} in {settings.timezone})")])
    oldest = today - timedelta(days=settings.retention_days - 1)
    if d < oldest:
        raise InvalidInput([FieldError(
            ["as_of"], f"{d} is older than the retention window ({settings.retention_days} days, oldest {oldest})"
        )])
    return d


@dataclass
class RunResult:
    """Outcome of one successful run."""

    run_id: int
    as_of: date
    rows: int
    dropped: list[date]
    duration_s: float
    computed_at: datetime
    steps: dict[str, float] = field(default_factory=dict)
    # 'swap' or 'concurrently' (NightlySettings.refresh_mode, or the swap's fallback).
    refresh: str = "swap"


class NightlyJob:
    """Refresh rollups and write the dated feature snapshot."""

    def __init__(self, database_url: str, settings: NightlySettings, *, decay: DecayConfig) -> None:
        # No default decay: the caller passes the deployment's (config.DecaySettings), the
        # same one the online learner uses, so snapshots and online scores agree.
        self.settings = settings
        self.decay = decay
        self.store = NightlyStore(database_url, work_mem=self.settings.work_mem,
                                  refresh_mode=self.settings.refresh_mode, swap=swap_policy(self.settings))

    def run(self, as_of: str | date | None = None, *, trigger: str = "cli",
            on_step: Callable[[str], None] | None = None) -> RunResult:
        """Run once for ``as_of`` (validated first; nothing is written for bad input).

        Raises ``NightlyRunning`` when another run holds the lock (the refused attempt is
        recorded in the ledger as 'skipped').  Any failure is recorded as 'failed' with its
        error before it propagates; the previous snapshot of the date stays in place.
        """
        now = datetime.now(UTC)
        day = parse_as_of(as_of, self.settings, now)
        ref = as_of_start(day, self.settings.tz)
        keep_from = now.astimezone(self.settings.tz).date() - timedelta(days=self.settings.retention_days - 1)
        t0 = time.perf_counter()
        steps: dict[str, float] = {}
        with self.store.connect() as ledger:
            if not self.store.try_lock(ledger):
                self.store.insert_run(ledger, day, trigger, "skipped", "another nightly run holds the lock")
                NIGHTLY_RUNS.labels("skipped").inc()
                log.warning("nightly run skipped: another run holds the lock",
                            extra={"as_of": day.isoformat(), "trigger": trigger})
                raise NightlyRunning("another nightly run is in progress", loc=["as_of"])
            try:
                abandoned = self.store.mark_abandoned(ledger)
                leftovers = self.store.drop_leftovers(ledger)
                if abandoned or leftovers:
                    log.warning("cleaned up after an interrupted run",
                                extra={"failed_runs": abandoned, "dropped_tables": leftovers})
                run_id = self.store.insert_run(ledger, day, trigger, "running")
                log.info("nightly run started", extra={"run_id": run_id, "as_of": day.isoformat(), "trigger": trigger})
                last: dict[str, Any] = {"t": time.perf_counter(), "name": ""}

                def step(name: str) -> None:
                    t = time.perf_counter()
                    if last["name"]:
                        steps[last["name"]] = round(t - last["t"], 3)
                    last.update(t=t, name=name)
                    log.info("nightly step", extra={"run_id": run_id, "step": name})
                    if on_step:
                        on_step(name)

                try:
                    built = self.store.build_snapshot(
                        run_id=run_id, as_of=day, as_of_ts=ref, decay=self.decay, privacy=privacy_filter(),
                        keep_from=keep_from, ledger=ledger, on_step=step,
                    )
                    step("done")
                except BaseException as exc:
                    # BaseException too: SIGTERM (mapped to SystemExit by the CLI) and Ctrl-C must
                    # still leave 'failed' in the ledger.
                    if isinstance(exc, SystemExit | KeyboardInterrupt):
                        msg = f"interrupted ({type(exc).__name__} {getattr(exc, 'code', '') or ''})".replace(" )", ")")
                    else:
                        msg = f"{type(exc).__name__}: {exc}".strip()
                    try:
                        self.store.finish_run(ledger, run_id, "failed", error=msg[:2000])
                    finally:
                        NIGHTLY_RUNS.labels("failed").inc()
                        log.error("nightly run failed", extra={"run_id": run_id, "as_of": day.isoformat(),
                                                               "error": msg})
                    raise
            finally:
                self.store.unlock(ledger)
        duration = time.perf_counter() - t0
        NIGHTLY_RUNS.labels("succeeded").inc()
        NIGHTLY_SECONDS.observe(duration)
        NIGHTLY_ROWS.set(built.rows)
        NIGHTLY_LAST_SUCCESS.set(time.time())
        log.info("nightly run succeeded", extra={
            "run_id": run_id, "as_of": day.isoformat(), "rows": built.rows, "duration_s": round(duration, 3),
            "dropped_snapshots": [d.isoformat() for d in built.dropped], "steps": steps, "refresh": built.refresh,
        })
        return RunResult(run_id=run_id, as_of=day, rows=built.rows, dropped=built.dropped, duration_s=duration,
                         computed_at=built.computed_at, steps=steps, refresh=built.refresh)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The ledger, newest first."""
        return self.store.list_runs(limit)

    def snapshots(self) -> list[dict[str, Any]]:
        """The snapshot catalogue, oldest first."""
        return self.store.list_snapshots()
