"""Point-in-time feature export: entity rows joined with the feature snapshot known at their time.

``export_features`` reads an entity file (CSV or Parquet with ``user_id`` and
``event_timestamp``) in chunks, joins each chunk in PostgreSQL with the snapshot of greatest
``computed_at <= event_timestamp`` (see :mod:`personalization.nightly.job`), and writes
Parquet.  Features stay empty for users whose *current* privacy level forbids
personalization, since a snapshot may predate their change.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prometheus_client import Counter, Histogram

from personalization.config import NightlySettings
from personalization.errors import FieldError, InvalidInput
from personalization.nightly.job import privacy_filter
from personalization.store.nightly import NightlyStore

__all__ = ["ExportResult", "export_features"]

log = logging.getLogger("personalization.nightly.export")

EXPORT_ROWS = Counter("personalization_features_export_rows_total", "Entity rows written by feature export")
EXPORT_SECONDS = Histogram(
    "personalization_features_export_duration_seconds", "Duration of one feature export",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)

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
    # Without settings: the section's defaults (the CLI passes the deployment's).
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
