"""Point-in-time export: no future values, privacy, streaming in chunks, bad input writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from nightly_helpers import add_events

from personalization.config import NightlySettings
from personalization.core.decay import DEFAULT_DECAY
from personalization.errors import InvalidInput
from personalization.nightly.export import export_features
from personalization.nightly.job import NightlyJob

NOW = datetime.now(UTC)
TODAY = NOW.date()


def _csv(path: Path, rows: list[tuple[Any, ...]], header: str = "user_id,event_timestamp,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(x) for x in r) + "\n" for r in rows))
    return path


def test_no_future_values_leak(tmp_path: Path, db_url: str, pg: psycopg.Connection[Any],
                               make_user: Callable[..., uuid.UUID]) -> None:
    settings = NightlySettings(timezone="UTC", export_chunk_rows=2)  # several chunks: streaming path
    job = NightlyJob(db_url, settings, decay=DEFAULT_DECAY)
    u = make_user(events=2)
    limited = make_user("limited", events=1)
    first = job.run(TODAY - timedelta(days=1))
    # Events that arrive after the first snapshot: only the second one may show them.
    add_events(pg, u, [("passage", "read", 0.5, NOW), ("devotional", "share", 1.5, NOW)])
    second = job.run(TODAY)
    t1, t2 = first.computed_at, second.computed_at
    assert t1 < t2
    mid = t1 + (t2 - t1) / 2
    unknown = uuid.uuid4()
    ent = _csv(tmp_path / "e.csv", [
        (u, (t1 - timedelta(seconds=1)).isoformat(), 0),   # before any snapshot existed
        (u, t1.isoformat(), 1),                             # exactly when the first was computed
        (u, mid.isoformat(), 0),                            # between: first snapshot, not the second
        (u, (t2 + timedelta(days=3)).isoformat(), 1),       # after both: the second
        (limited, (t2 + timedelta(days=1)).isoformat(), 0),  # not personalized: no features
        (unknown, (t2 + timedelta(days=1)).isoformat(), 1),  # unknown user: no features
    ])
    out = tmp_path / "train.parquet"
    result = export_features(db_url, ent, out, settings)
    assert result.rows == 6 and result.rows_with_features == 3
    t = pq.read_table(out).to_pylist()
    assert [r["label"] for r in t] == [0, 1, 0, 1, 0, 1]  # input order and labels kept
    assert t[0]["snapshot_as_of"] is None and t[0]["event_count"] is None and t[0]["rollups"] is None
    assert [r["snapshot_as_of"] for r in t[1:4]] == [first.as_of, first.as_of, second.as_of]
    assert [r["event_count"] for r in t[1:4]] == [2, 2, 4]
    for r in t[1:3]:
        # Nothing in the row may come from after its timestamp.
        assert r["snapshot_computed_at"] <= r["event_timestamp"]
        assert r["last_seen_at"] < r["event_timestamp"]
        assert [x["content_type"] for x in r["rollups"]] == ["passage"]
    assert {(x["content_type"], x["signal_type"], x["event_count"]) for x in t[3]["rollups"]} == {
        ("devotional", "share", 1), ("passage", "read", 3)}
    assert t[3]["decayed_weight"] == pytest.approx(sum(x["decayed_weight"] for x in t[3]["rollups"]))
    assert t[4]["snapshot_as_of"] == second.as_of and t[4]["event_count"] is None
    assert t[5]["event_count"] is None
    assert t[0]["user_id"] == str(u)


def test_parquet_input_and_naive_timestamps(tmp_path: Path, db_url: str, job: NightlyJob,
                                            make_user: Callable[..., uuid.UUID]) -> None:
    u = make_user(events=1)
    r = job.run(None)
    naive = (r.computed_at + timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None)
    ent = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": [str(u)], "event_timestamp": pa.array([naive], pa.timestamp("us"))}), ent)
    out = tmp_path / "o.parquet"
    export_features(db_url, ent, out)
    rows = pq.read_table(out).to_pylist()
    assert rows[0]["event_count"] == 1 and "label" not in rows[0]
    assert rows[0]["event_timestamp"] == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("content", "loc"),
    [
        ("user_id,label\nX,1\n", ["entities", "event_timestamp"]),
        ("uid,event_timestamp\n1,2026-01-01\n", ["entities", "user_id"]),
        ("user_id,event_timestamp\n{u},2026-01-01T00:00:00Z\nnot-a-uuid,2026-01-01T00:00:00Z\n",
         ["entities", 2, "user_id"]),
        ("user_id,event_timestamp\n{u},2026-01-01T00:00:00Z\n{u},2026-13-45\n", ["entities", 2, "event_timestamp"]),
        ("user_id,event_timestamp\n{u},\n", ["entities", 1, "event_timestamp"]),
    ],
)
def test_bad_entities_write_nothing(tmp_path: Path, db_url: str, content: str, loc: list[Any]) -> None:
    ent = tmp_path / "e.csv"
    ent.write_text(content.replace("{u}", str(uuid.uuid4())))
    out = tmp_path / "o.parquet"
    out.write_bytes(b"previous")
    with pytest.raises(InvalidInput) as ei:
        # Chunks of one row: the bad row comes after a good chunk was already joined.
        export_features(db_url, ent, out, NightlySettings(export_chunk_rows=1))
    assert ei.value.errors[0].loc == loc
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "o.parquet"]


def test_bad_paths(tmp_path: Path, db_url: str) -> None:
    with pytest.raises(InvalidInput) as ei:
        export_features(db_url, tmp_path / "missing.csv", tmp_path / "o.parquet")
    assert ei.value.errors[0].loc == ["entities"]
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(InvalidInput):
        export_features(db_url, tmp_path / "e.json", tmp_path / "o.parquet")
    _csv(tmp_path / "e.csv", [])
    with pytest.raises(InvalidInput) as ei:
        export_features(db_url, tmp_path / "e.csv", tmp_path / "nodir" / "o.parquet")
    assert ei.value.errors[0].loc == ["out"]
    assert not (tmp_path / "o.parquet").exists()


def test_empty_entities_file(tmp_path: Path, db_url: str) -> None:
    out = tmp_path / "o.parquet"
    result = export_features(db_url, _csv(tmp_path / "e.csv", [], header="user_id,event_timestamp"), out)
    assert result.rows == 0
    assert pq.read_table(out).num_rows == 0
