"""The ingest fast path (core/fast_events.py) against the full EventIn validation, and the text COPY."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
import redis

from personalization.cache import keys
from personalization.composition import Platform, open_platform
from personalization.config import Settings
from personalization.core.fast_events import OCCURRED_AT, TS, fast_events
from personalization.core.models import DEFAULT_LIMITS, EventIn, has_nul_escape
from personalization.errors import InvalidInput
from personalization.ingest.validation import _parse_events_full

NOW = datetime.now(UTC).replace(microsecond=0)
USER = "0b7e4c52-5e0f-4a8e-9b55-6c1f3f6a2d10"


def _base(**kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "client_event_id": "5f0c2a4e-1d3b-4c5a-8e7f-9a0b1c2d3e4f",
        "user_id": USER,
        "session_id": "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f",
        "content_id": "JHN.3.16",
        "content_type": "passage",
        "signal_type": "view",
        "signal_weight": 0.5,
        "metadata": {"platform": "ios"},
        "occurred_at": (NOW - timedelta(hours=1)).isoformat(),
    }
    ev.update(kw)
    return ev


VARIANTS: list[dict[str, Any]] = [
    {},
    {"client_event_id": None, "user_id": None, "session_id": None, "metadata": None},
    {"user_id": USER.upper()},
    {"user_id": "{" + USER + "}"},
    {"user_id": USER.replace("-", "")},
    {"user_id": uuid.UUID(USER)},
    {"user_id": "not-a-uuid"},
    {"session_id": 123},
    {"signal_weight": 1},
    {"signal_weight": -9.999},
    {"signal_weight": 9.999},
    {"signal_weight": 10},
    {"signal_weight": 0.1234},
    {"signal_weight": 1e-7},
    {"signal_weight": "0.5"},
    {"signal_weight": " 0.5"},
    {"signal_weight": "0.50"},
    {"signal_weight": "9.9990"},
    {"signal_weight": Decimal("0.50")},
    {"signal_weight": Decimal("1E-1")},
    {"signal_weight": True},
    {"signal_weight": "NaN"},
    {"signal_weight": float("inf")},
    {"signal_weight": "-0"},
    {"occurred_at": (NOW - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")},
    {"occurred_at": (NOW - timedelta(hours=2)).astimezone().isoformat()},
    {"occurred_at": "2026-01-15T08:30:00.5+05:30"},
    {"occurred_at": "2026-01-15T08:30:00.123456-00:00"},
    {"occurred_at": "2026-01-15T08:30:00.1234567+00:00"},
    {"occurred_at": "2026-01-15T08:30:00+23:59"},
    {"occurred_at": "2026-01-15T08:30:00+24:00"},
    {"occurred_at": "2026-01-15T08:30:00-16:00"},
    {"occurred_at": "2026-01-15T08:30:00+15:59"},
    {"occurred_at": "2026-01-15T08:30:00+05:30:15"},
    {"occurred_at": "2026-01-15t08:30:00z"},
    {"occurred_at": "2026-01-15 08:30:00+00:00"},
    {"occurred_at": "2026-01-15T08:30:00"},
    {"occurred_at": "2026-02-30T08:30:00Z"},
    {"occurred_at": "2026-01-15T24:00:00Z"},
    {"occurred_at": "2026-01-15T23:59:60Z"},
    {"occurred_at": "1970-01-02T00:00:00Z"},
    {"occurred_at": "1970-01-01T23:59:59Z"},
    {"occurred_at": (NOW + timedelta(days=2)).isoformat()},
    {"occurred_at": 1_700_000_000},
    {"occurred_at": NOW - timedelta(minutes=5)},
    {"content_id": ""},
    {"content_id": "   "},
    {"content_id": "a\tb"},
    {"content_id": "line\nbreak"},
    {"content_id": "back\\slash"},
    {"content_id": "\\N"},
    {"content_id": "cr\r"},
    {"content_id": "nul\x00"},
    {"content_id": "é \U0001d50a"},
    {"content_id": "x" * 256},
    {"content_id": "x" * 257},
    {"content_type": 5},
    {"signal_type": None},
    {"signal_type": "lik"},
    {"signal_type": "highlight"},
    {"signal_weight": 99},
    {"signal_weight": "0.1234"},
    {"metadata": {"a": "x\ny", "b": "tab\t", "c": "q\"uote", "d": "back\\slash", "e": "\\u0000"}},
    {"metadata": {"a": "nul\x00"}},
    {"metadata": {"nul\x00key": 1}},
    {"metadata": {"blob": "x" * 5000}},
    {"metadata": [1, 2]},
    {"metadata": {"n": 12345678901234567890123}},
    {"metadata": {"when": NOW}},
    {"colour": "red"},
]


@pytest.mark.parametrize("patch", VARIANTS, ids=[repr(v)[:60] for v in VARIANTS])
def test_fast_path_is_a_subset_of_the_full_validation(patch: dict[str, Any]) -> None:
    """The fast path never accepts what EventIn rejects, and gives the same values when it accepts."""
    ev = _base(**patch)
    fast = fast_events([ev], DEFAULT_LIMITS)
    full_valid, full_rejected = _parse_events_full([ev], limits=DEFAULT_LIMITS, atomic=False)
    if fast is None:
        return  # decided by the full validation alone
    assert full_rejected == [] and len(full_valid) == 1, f"fast path accepted an invalid event: {patch!r}"
    (f,), (g,) = fast, full_valid
    # Same values; occurred_at may be spelled differently but is the same instant.
    assert f[:OCCURRED_AT] == g[:OCCURRED_AT] and f[TS + 1 :] == g[TS + 1 :]
    assert datetime.fromisoformat(f[OCCURRED_AT]) == datetime.fromisoformat(g[OCCURRED_AT])
    assert f[TS] == g[TS]


def test_fast_path_takes_the_common_shapes() -> None:
    """The shapes clients send (and the benchmark uses) do not fall back to EventIn."""
    batch = [
        _base(),
        _base(signal_weight=-0.5, metadata=None, session_id=None),
        _base(user_id=None, occurred_at=(NOW - timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
        _base(signal_weight="0.25", content_id="GEN.1", metadata={"seconds": 42, "nested": {"a": [1, 2.5, None]}}),
    ]
    out = fast_events(batch, DEFAULT_LIMITS)
    assert out is not None and [e[0] for e in out] == [0, 1, 2, 3]


def test_nul_escape_detection() -> None:
    assert has_nul_escape(b'{"a":"x\\u0000"}')
    assert has_nul_escape(b'{"a":"x\\\\\\u0000"}')  # an escaped backslash, then NUL
    assert not has_nul_escape(b'{"a":"x\\\\u0000"}')  # the six characters \u0000
    assert not has_nul_escape(b'{"a":"u0000"}')


def _rows(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT user_id, session_id, content_id, content_type, signal_type, signal_weight, metadata, occurred_at"
            " FROM personalization_events ORDER BY event_id"
        ).fetchall()


async def test_text_copy_round_trips_exact_values(settings: Settings, db_url: str) -> None:
    """Characters COPY's text format escapes, odd timestamp spellings, both validation paths."""
    # Free text in signal_type too: a deployment that accepts any signal type.
    async with open_platform(settings.replace(ingest={"signal_types_open": True})) as platform:
        await _round_trip(platform, db_url)


async def _round_trip(platform: Platform, db_url: str) -> None:
    uid = uuid.uuid4()
    await platform.profiles.store.upsert(uid, {})
    meta = {"a": "x\ny", "b": "tab\t", "c": 'q"uote', "d": "back\\slash", "e": "\\N", "f": "\\u0000", "g": "é"}
    texts = ["a\tb", "line\nbreak", "back\\slash", "\\N", "cr\r", "é \U0001d50a", "plain"]
    # Offsets of 16 h and more are valid ISO 8601 but not PostgreSQL input: written as UTC.
    stamps = ["2026-01-15T08:30:00Z", "2026-01-15T08:30:00.5+05:30", "2026-01-15T08:30:00.123456-03:00",
              "2026-01-15T08:30:00+23:59", "2026-01-15T08:30:00-16:00", "2026-01-15T08:30:00+15:59"]
    batch = [
        _base(user_id=str(uid), content_id=t, content_type=t, signal_type=t, metadata=meta,
              occurred_at=stamps[i % len(stamps)], client_event_id=str(uuid.uuid4()))
        for i, t in enumerate(texts)
    ]
    # The clean rows in a batch of their own go through the fast path; the others through EventIn.
    r1 = await platform.ingestor.ingest(batch[-2:])
    r2 = await platform.ingestor.ingest(batch[:-2])
    # Non-canonical UUID spellings and Decimal weights (full validation) end up canonical.
    odd = _base(user_id=str(uid).upper(), session_id="{" + str(uuid.uuid4()) + "}", signal_weight=Decimal("0.50"),
                client_event_id=str(uuid.uuid4()).upper())
    r3 = await platform.ingestor.ingest([odd])
    assert (r1.accepted, r2.accepted, r3.accepted) == (2, 5, 1)
    rows = _rows(db_url)
    by_content = {r[2]: r for r in rows}
    for i, t in enumerate(texts):
        row = by_content[t]
        assert row[0] == uid and row[3] == t and row[4] == t
        assert row[6] == meta
        assert row[7] == datetime.fromisoformat(stamps[i % len(stamps)])
    last = rows[-1]
    assert last[0] == uid and last[1] == uuid.UUID(odd["session_id"]) and last[5] == Decimal("0.500")
    # A clean event whose offset PostgreSQL would refuse leaves the fast path and is stored.
    far = _base(user_id=str(uid), content_id="far", occurred_at="2026-01-15T23:30:00+23:59",
                client_event_id=str(uuid.uuid4()))
    assert fast_events([far], DEFAULT_LIMITS) is None
    assert (await platform.ingestor.ingest([far])).accepted == 1
    assert _rows(db_url)[-1][7] == datetime(2026, 1, 14, 23, 31, tzinfo=UTC)


async def test_nul_is_rejected_with_its_field(client: httpx.AsyncClient, db_url: str) -> None:
    """PostgreSQL TEXT and JSONB cannot hold NUL: a 4xx naming the field, not a failed group commit."""
    for patch, field in (({"content_id": "a\x00"}, "content_id"), ({"metadata": {"k": "\x00"}}, "metadata")):
        good = _base(user_id=None, client_event_id=str(uuid.uuid4()))
        r = await client.post("/v1/events", json={"events": [good, _base(user_id=None, **patch)]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == 1 and body["rejected"][0]["index"] == 1
        assert body["rejected"][0]["errors"][0]["loc"] == ["body", "events", 1, field]
        r = await client.post("/v1/events?atomic=true", json={"events": [_base(user_id=None, **patch)]})
        assert r.status_code == 422
    assert len(_rows(db_url)) == 2


async def test_library_errors_keep_indexes_after_fast_path_miss(platform: Platform) -> None:
    with pytest.raises(InvalidInput) as exc:
        await platform.ingestor.ingest([_base(user_id=None), _base(user_id=None, signal_weight=0.1234)], atomic=True)
    assert exc.value.errors[0].loc[:4] == ["body", "events", 1, "signal_weight"]


async def test_event_models_are_accepted(platform: Platform, db_url: str) -> None:
    e = EventIn.model_validate(_base(user_id=None, content_id="tab\there"))
    r = await platform.ingestor.ingest([e, e.model_copy(update={"client_event_id": uuid.uuid4()})])
    assert r.accepted == 2
    assert [row[2] for row in _rows(db_url)] == ["tab\there", "tab\there"]


async def test_many_ids_of_one_user_in_one_group(platform: Platform, sync_redis: redis.Redis) -> None:
    """More ids for one key than one ZMSCORE/ZADD slice; replays and in-group repeats are flagged."""
    uid = uuid.uuid4()
    await platform.profiles.store.upsert(uid, {})
    ids = [str(uuid.uuid4()) for _ in range(2300)]
    first = [_base(user_id=str(uid), client_event_id=i, session_id=None) for i in ids[:1200]]
    r = await platform.ingestor.ingest(first)
    assert r.accepted == 1200
    again = [_base(user_id=str(uid), client_event_id=i, session_id=None) for i in ids]
    again.append(again[-1])
    r = await platform.ingestor.ingest(again)
    assert r.accepted == 1100
    assert r.duplicates == [*range(1200), 2300]
    assert sync_redis.zcard(keys.user_signals(uid)) == 2300


def _flush_count() -> float:
    from personalization import metrics

    for metric in metrics.GROUP_COMMIT_ROWS.collect():
        for s in metric.samples:
            if s.name.endswith("_count"):
                return s.value
    raise AssertionError("no histogram count")


@pytest.mark.parametrize(("concurrency", "flushes"), [(2, 2), (1, 1)])
async def test_backlog_is_shared_among_idle_flushers(
    settings: Any, db_url: str, concurrency: int, flushes: int
) -> None:
    """Four waiting requests of 10 rows, split at 10 rows: two groups when two flushers are idle."""
    from personalization.composition import open_platform

    cfg = settings.replace(
        ingest={"group_commit_window_ms": 50.0, "group_commit_split_rows": 10, "group_commit_concurrency": concurrency},
    )
    async with open_platform(cfg) as p:
        before = _flush_count()
        batches = [[_base(user_id=None, client_event_id=str(uuid.uuid4())) for _ in range(10)] for _ in range(4)]
        results = await asyncio.gather(*(p.ingestor.ingest(b) for b in batches))
        assert [r.accepted for r in results] == [10, 10, 10, 10]
        assert _flush_count() - before == flushes
    assert len(_rows(db_url)) == 40
