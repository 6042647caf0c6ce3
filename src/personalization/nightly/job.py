"""The nightly job, its scheduler and point-in-time feature export (issue 5).

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

import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from personalization.core.decay import DEFAULT_DECAY, DecayConfig
from personalization.core.privacy import DEFAULT_PRIVACY_LEVEL, POLICIES
from personalization.errors import Conflict, FieldError, InvalidInput
from personalization.store.nightly import NightlyStore, PrivacyFilter, RefreshMode, SwapPolicy

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
EXPORT_ROWS = Counter("personalization_features_export_rows_total", "Entity rows written by feature export")
EXPORT_SECONDS = Histogram(
    "personalization_features_export_duration_seconds", "Duration of one feature export",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


class NightlySettings(BaseSettings):
    """Settings of the nightly job (env prefix ``PERSONALIZATION_NIGHTLY_``)."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZATION_NIGHTLY_", extra="ignore")

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    # Snapshots with as_of older than (today - retention_days + 1) are dropped by each run.
    retention_days: int = Field(default=35, ge=1)
    # Session work_mem of the job's connections (the refresh diff and the hash aggregates).
    work_mem: str = "64MB"
    export_chunk_rows: int = Field(default=100_000, ge=1)
    # How far back the scheduler looks for a missed run at start-up.
    catch_up_days: int = Field(default=7, ge=0)
    # How user_signal_rollups is refreshed (module docstring): 'swap' or 'concurrently'.
    refresh_mode: RefreshMode = "swap"
    # The swap's longest wait for the view's lock per attempt: the most a reader is held up.
    swap_lock_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    swap_attempts: int = Field(default=25, ge=1)

    @property
    def swap_policy(self) -> SwapPolicy:
        return SwapPolicy(lock_timeout_ms=self.swap_lock_timeout_ms, attempts=self.swap_attempts)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


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

    def __init__(self, database_url: str, settings: NightlySettings | None = None,
                 decay: DecayConfig = DEFAULT_DECAY) -> None:
        self.settings = settings or NightlySettings()
        self.decay = decay
        self.store = NightlyStore(database_url, work_mem=self.settings.work_mem,
                                  refresh_mode=self.settings.refresh_mode, swap=self.settings.swap_policy)

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


# -- scheduling ------------------------------------------------------------------------


class NightlyScheduler:
    """Runs the job on a cron schedule (APScheduler) with start-up catch-up.

    Overlap is impossible twice over: APScheduler's ``max_instances=1`` within the process
    and the run lock across processes.  A fire time missed while the process was down is
    caught up at start (only the most recent one: a snapshot computed now for an older
    date would hold today's data anyway).
    """

    def __init__(self, job: NightlyJob, *, trigger: Any = None,
                 after_run: Callable[[RunResult], None] | None = None) -> None:
        from apscheduler.triggers.cron import CronTrigger

        self.job = job
        # Further nightly work of other packages (recommendation training), run after a success.
        self.after_run = after_run
        self.tz = job.settings.tz
        try:
            self.trigger = trigger or CronTrigger.from_crontab(job.settings.cron, timezone=self.tz)
        except ValueError as exc:
            raise InvalidInput([FieldError(["cron"], f"invalid cron expression {job.settings.cron!r}: {exc}")]) from exc
        self.scheduler: Any = None

    def previous_fire_time(self, now: datetime) -> datetime | None:
        """The last scheduled time at or before ``now`` within the catch-up window."""
        start = now - timedelta(days=self.job.settings.catch_up_days)
        prev: datetime | None = None
        t = self.trigger.get_next_fire_time(None, start)
        while t is not None and t <= now:
            prev = t
            t = self.trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
        return prev

    def catch_up(self, now: datetime | None = None) -> RunResult | None:
        """Run now for the last missed fire time, if its run never succeeded."""
        now = now or datetime.now(self.tz)
        missed = self.previous_fire_time(now)
        if missed is None:
            return None
        as_of = missed.astimezone(self.tz).date()
        if self.job.store.succeeded_since(as_of, missed):
            return None
        log.info("catching up a missed nightly run", extra={"scheduled_for": missed.isoformat(),
                                                           "as_of": as_of.isoformat()})
        return self._run(as_of, "catch-up")

    def _run(self, as_of: date | None, trigger: str) -> RunResult | None:
        try:
            result = self.job.run(as_of, trigger=trigger)
        except NightlyRunning:
            return None
        except Exception:
            # Logged and recorded in the ledger; the scheduler keeps going for the next night.
            log.exception("scheduled nightly run failed")
            return None
        if self.after_run is not None:
            try:
                self.after_run(result)
            except Exception:
                log.exception("work after the nightly run failed")
        return result

    def scheduled(self) -> RunResult | None:
        """The scheduled job body: today's snapshot in the configured zone."""
        return self._run(None, "schedule")

    def start(self, *, blocking: bool = True) -> None:
        """Catch up, then run the schedule (blocking until stopped, or in a background thread)."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.schedulers.blocking import BlockingScheduler

        cls = BlockingScheduler if blocking else BackgroundScheduler
        self.scheduler = cls(timezone=self.tz)
        self.scheduler.add_job(
            self.scheduled, self.trigger, id="nightly", max_instances=1, coalesce=True,
            misfire_grace_time=6 * 3600, replace_existing=True,
        )
        self.catch_up()
        nxt = self.trigger.get_next_fire_time(None, datetime.now(self.tz))
        log.info("nightly scheduler started", extra={"cron": self.job.settings.cron, "timezone": str(self.tz),
                                                     "next_run": nxt.isoformat() if nxt else None})
        self.scheduler.start()

    def stop(self) -> None:
        """Stop the scheduler, waiting for a run in progress."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)


# -- point-in-time export ----------------------------------------------------------------

_ROLLUP_TYPE = pa.struct([
    ("content_type", pa.string()),
    ("signal_type", pa.string()),
    ("event_count", pa.int64()),
    ("total_weight", pa.float64()),
    ("last_seen_at", pa.timestamp("us", tz="UTC")),
    ("decayed_weight", pa.float64()),
])
_TS = pa.timestamp("us", tz="UTC")


def _batches(path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """Entity rows in batches of at most ``chunk_rows`` (CSV with a header, or Parquet)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InvalidInput([FieldError(["entities"], f"no such file: {path}")])
    try:
        if suffix == ".csv":
            reader = pacsv.open_csv(
                path,
                # Blocks of about chunk_rows lines (~100 bytes each): one join per chunk.
                read_options=pacsv.ReadOptions(block_size=max(1 << 20, min(chunk_rows * 100, 1 << 28))),
                convert_options=pacsv.ConvertOptions(
                    column_types={"user_id": pa.string(), "event_timestamp": pa.string()}
                ),
            )
            _require_columns(reader.schema.names)
            for b in reader:
                for off in range(0, b.num_rows, chunk_rows):
                    yield b.slice(off, chunk_rows)
        elif suffix in (".parquet", ".pq"):
            pf = pq.ParquetFile(path)
            _require_columns(pf.schema_arrow.names)
            cols = [c for c in ("user_id", "event_timestamp", "label") if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=chunk_rows, columns=cols)
        else:
            raise InvalidInput([FieldError(["entities"], f"unsupported file type {suffix!r} (use .csv or .parquet)")])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InvalidInput([FieldError(["entities"], f"cannot read {path.name}: {exc}")]) from exc


def _require_columns(names: list[str]) -> None:
    missing = [c for c in ("user_id", "event_timestamp") if c not in names]
    if missing:
        raise InvalidInput([FieldError(["entities", c], f"missing column {c!r} (have: {', '.join(names)})")
                            for c in missing])


_UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def _parse_entities(batch: pa.RecordBatch, first_row: int) -> tuple[pa.Array, pa.Array]:
    """Validated user ids (canonical text) and UTC timestamps of one batch.

    The common case (canonical UUID text, timestamps with an offset or already typed) is
    checked column-wise by Arrow; anything else goes through the per-row path, which also
    names the first bad row (1-based data row) and column in its error.
    """
    ids = batch.column("user_id")
    ts = batch.column("event_timestamp")
    try:
        if not pa.types.is_string(ids.type) or ids.null_count:
            raise ValueError("slow path")
        if not pc.all(pc.match_substring_regex(ids, _UUID_RE)).as_py():
            raise ValueError("slow path")
        if pa.types.is_timestamp(ts.type):
            if ts.null_count:
                raise ValueError("slow path")
            stamps = ts.cast(pa.timestamp("us", tz=ts.type.tz or "UTC")).cast(_TS)
        else:
            stamps = pc.cast(ts, _TS)
            if stamps.null_count:
                raise ValueError("slow path")
        return pc.utf8_lower(ids), stamps
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    parsed_ids: list[str] = []
    for i, raw in enumerate(ids.to_pylist()):
        try:
            parsed_ids.append(str(raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw)) if raw is not None
                                  else _bad()))
        except ValueError:
            raise InvalidInput([FieldError(["entities", first_row + i, "user_id"],
                                           f"row {first_row + i}: user_id is not a UUID: {raw!r}")]) from None
    parsed_ts: list[datetime] = []
    is_ts = pa.types.is_timestamp(ts.type)
    for i, raw in enumerate(ts.to_pylist()):
        try:
            if raw is None:
                _bad()
            t = raw if is_ts else datetime.fromisoformat(str(raw).strip())
            if not isinstance(t, datetime):
                _bad()
        except ValueError:
            raise InvalidInput([FieldError(["entities", first_row + i, "event_timestamp"],
                                           f"row {first_row + i}: event_timestamp is not an ISO 8601 timestamp: "
                                           f"{raw!r}")]) from None
        # Naive timestamps are read as UTC (documented for the entities file).
        parsed_ts.append(t if t.tzinfo else t.replace(tzinfo=UTC))
    return pa.array(parsed_ids, pa.string()), pa.array(parsed_ts, _TS)


def _bad() -> Any:
    raise ValueError("bad value")


def _entities_table(first: int, ids: pa.Array, stamps: pa.Array) -> pa.Table:
    return pa.table({"row_no": pa.array(np.arange(first, first + len(ids), dtype=np.int64)), "user_id": ids,
                     "ts": stamps})


def _to_table(batch: pa.RecordBatch, first: int, ids: pa.Array, stamps: pa.Array, assigned: pa.Table,
              feats: pa.Table) -> tuple[pa.Table, int]:
    """The output rows of one chunk and how many of them have features."""
    n = len(ids)
    # Grouped by entity row (an integer sort in Arrow); the order of the rollups inside one
    # row is not meaningful (each carries its content_type and signal_type).
    feats = feats.take(pc.sort_indices(feats.column("row_no")))
    if assigned.num_rows != n:
        raise RuntimeError(f"point-in-time join returned {assigned.num_rows} rows for {n} entities")
    pos = feats.column("row_no").to_numpy() - first
    counts = np.bincount(pos, minlength=n) if len(pos) else np.zeros(n, np.int64)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    has = counts > 0
    starts = offsets[:-1][has]
    empty = ~has

    def per_row(col: str, ufunc: Any, as_type: pa.DataType, via: pa.DataType) -> pa.Array:
        # Segment reduction over the feature rows of each entity row (they arrive grouped).
        values = feats.column(col).cast(via).to_numpy()
        out = np.zeros(n, values.dtype)
        if len(starts):
            out[has] = ufunc.reduceat(values, starts)
        return pa.array(out, via, mask=empty).cast(as_type)

    struct = pa.StructArray.from_arrays([feats.column(f.name).combine_chunks().cast(f.type) for f in _ROLLUP_TYPE],
                                        fields=list(_ROLLUP_TYPE))
    rollups = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, mask=pa.array(empty))
    data: dict[str, Any] = {"user_id": ids, "event_timestamp": stamps}
    if "label" in batch.schema.names:
        data["label"] = batch.column("label")
    data |= {
        "snapshot_as_of": assigned.column("as_of").cast(pa.date32()),
        "snapshot_computed_at": assigned.column("computed_at").cast(_TS),
        "event_count": per_row("event_count", np.add, pa.int64(), pa.int64()),
        "total_weight": per_row("total_weight", np.add, pa.float64(), pa.float64()),
        "last_seen_at": per_row("last_seen_at", np.maximum, _TS, pa.int64()),
        "decayed_weight": per_row("decayed_weight", np.add, pa.float64(), pa.float64()),
        "rollups": rollups,
    }
    return pa.table(data), int(has.sum())


@dataclass
class ExportResult:
    """Outcome of a feature export."""

    rows: int
    rows_with_features: int
    duration_s: float
    out: Path


def export_features(database_url: str, entities: Path, out: Path, settings: NightlySettings | None = None,
                    on_rows: Callable[[int], None] | None = None) -> ExportResult:
    """Write ``entities`` joined point-in-time with feature snapshots to ``out`` (Parquet).

    The input is read and joined in chunks (bounded memory for any input size); the join
    runs in PostgreSQL.  Output goes to a temporary file renamed over ``out`` at the end,
    so a bad row anywhere (or a crash) leaves ``out`` untouched.
    """
    settings = settings or NightlySettings()
    entities, out = Path(entities), Path(out)
    if not out.parent.is_dir():
        raise InvalidInput([FieldError(["out"], f"directory does not exist: {out.parent}")])
    if out.exists() and out.is_dir():
        raise InvalidInput([FieldError(["out"], f"is a directory: {out}")])
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    t0 = time.perf_counter()
    store = NightlyStore(database_url, work_mem=settings.work_mem)
    privacy = privacy_filter()
    total = with_features = 0
    writer: pq.ParquetWriter | None = None
    try:
        batches = _batches(entities, settings.export_chunk_rows)
        # The file's columns and first chunk are checked before connecting: bad input is
        # reported as such (exit 2) even when PostgreSQL is down as well.
        first = next(batches, None)
        parsed_first = _parse_entities(first, 1) if first is not None else None
        with store.pit_session() as session:
            for batch in itertools.chain([first] if first is not None else [], batches):
                ids, stamps = parsed_first if parsed_first is not None else _parse_entities(batch, total + 1)
                parsed_first = None
                assigned, feats = session.join(_entities_table(total, ids, stamps), privacy)
                table, n_feat = _to_table(batch, total, ids, stamps, assigned, feats)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                elif table.schema != writer.schema:
                    # A label column whose inferred type changed between CSV blocks.
                    table = table.cast(writer.schema)
                writer.write_table(table)
                total += len(ids)
                with_features += n_feat
                if on_rows:
                    on_rows(len(ids))
        if writer is None:
            writer = pq.ParquetWriter(tmp, _empty_schema(entities))
        writer.close()
        writer = None
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    duration = time.perf_counter() - t0
    EXPORT_ROWS.inc(total)
    EXPORT_SECONDS.observe(duration)
    log.info("features exported", extra={"rows": total, "rows_with_features": with_features,
                                         "duration_s": round(duration, 3), "out": str(out)})
    return ExportResult(rows=total, rows_with_features=with_features, duration_s=duration, out=out)


def _empty_schema(entities: Path) -> pa.Schema:
    empty = pa.record_batch({"user_id": pa.array([], pa.string()), "event_timestamp": pa.array([], pa.string())})
    assigned = pa.table({"row_no": pa.array([], pa.int64()), "as_of": pa.array([], pa.date32()),
                         "computed_at": pa.array([], _TS)})
    feats = pa.table({"row_no": pa.array([], pa.int64())} | {f.name: pa.array([], f.type) for f in _ROLLUP_TYPE})
    return _to_table(empty, 0, pa.array([], pa.string()), pa.array([], _TS), assigned, feats)[0].schema
