"""Event ingestion over HTTP and through the library, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import redis

from personalization import metrics
from personalization.cache import keys
from personalization.composition import Platform, open_platform
from personalization.config import Settings
from personalization.errors import InvalidInput, NotFound, StoreError
from personalization_dev.testing.http import AppClients


def _ev(user: uuid.UUID | None, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "client_event_id": str(uuid.uuid4()),
        "user_id": str(user) if user else None,
        "session_id": str(uuid.uuid4()),
        "content_id": "JHN.3",
        "content_type": "passage",
        "signal_type": "view",
        "signal_weight": 0.5,
        "metadata": {"platform": "ios"},
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    base.update(kw)
    return base


def _rows(db_url: str, where: str = "true") -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT user_id, session_id, content_id, content_type, signal_type, signal_weight, metadata, occurred_at"
            f" FROM personalization_events WHERE {where} ORDER BY event_id"
        ).fetchall()


async def _user(client: httpx.AsyncClient, **fields: Any) -> uuid.UUID:
    uid = uuid.uuid4()
    r = await client.put(f"/v1/users/{uid}", json=fields)
    assert r.status_code == 201
    return uid


async def test_batch_is_stored_with_exact_values(client: httpx.AsyncClient, db_url: str) -> None:
    uid = await _user(client)
    t = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    evs = [
        _ev(uid, signal_type="bookmark", signal_weight=-9.999, occurred_at=t.isoformat(), metadata={"a": [1]}),
        _ev(None, content_id="PSA.23", metadata=None),
    ]
    r = await client.post("/v1/events", json={"events": evs})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 2, "duplicates": [], "suppressed": [], "rejected": [], "dedup": "ok"}
    rows = _rows(db_url)
    assert len(rows) == 2
    assert rows[0][0] == uid and str(rows[0][5]) == "-9.999" and rows[0][6] == {"a": [1]} and rows[0][7] == t
    assert rows[1][0] is None and rows[1][2] == "PSA.23" and rows[1][6] is None


async def test_replays_are_dropped_within_48h(client: httpx.AsyncClient, db_url: str, sync_redis: redis.Redis) -> None:
    uid = await _user(client)
    e = _ev(uid)
    r1 = await client.post("/v1/events", json={"events": [e]})
    assert r1.json()["accepted"] == 1
    # Replayed alone, and twice inside one batch.
    r2 = await client.post("/v1/events", json={"events": [e, _ev(uid) | {"client_event_id": e["client_event_id"]}]})
    assert r2.json()["accepted"] == 0 and r2.json()["duplicates"] == [0, 1]
    fresh = _ev(uid)
    r3 = await client.post("/v1/events", json={"events": [fresh, fresh]})
    assert r3.json()["accepted"] == 1 and r3.json()["duplicates"] == [1]
    assert len(_rows(db_url)) == 2

    key = keys.user_signals(uid)
    assert key == f"user:{{{uid}}}:signals"
    score = sync_redis.zscore(key, e["client_event_id"])
    assert score == math.floor(datetime.fromisoformat(e["occurred_at"]).timestamp())
    ttl = sync_redis.ttl(key)
    assert 47 * 3600 < ttl <= 48 * 3600

    # Entries older than the window are trimmed on the next write.
    sync_redis.zadd(key, {"stale": time.time() - 49 * 3600})
    await client.post("/v1/events", json={"events": [_ev(uid)]})
    assert sync_redis.zscore(key, "stale") is None


async def test_anonymous_replays_are_dropped(client: httpx.AsyncClient, db_url: str) -> None:
    e = _ev(None)
    await client.post("/v1/events", json={"events": [e]})
    r = await client.post("/v1/events", json={"events": [e]})
    assert r.json()["duplicates"] == [0]
    assert len(_rows(db_url)) == 1


async def test_session_recent_content(client: httpx.AsyncClient, sync_redis: redis.Redis) -> None:
    uid = await _user(client)
    session = str(uuid.uuid4())
    now = datetime.now(UTC)
    evs = [
        _ev(uid, session_id=session, content_id=f"GEN.{i}", occurred_at=(now - timedelta(seconds=100 - i)).isoformat())
        for i in range(1, 61)
    ]
    evs.append(_ev(uid, session_id=session, content_id="GEN.5", occurred_at=now.isoformat()))  # seen again: moves up
    evs.append(_ev(uid, session_id=session, content_id="EXO.1", signal_type="share"))  # not a view
    r = await client.post("/v1/events", json={"events": evs})
    assert r.json()["accepted"] == 62
    key = keys.session_recent_content(session)
    assert key == f"session:{{{session}}}:recent_content"
    items = sync_redis.lrange(key, 0, -1)
    assert len(items) == 50
    assert items[0] == "GEN.5" and items[1] == "GEN.60" and items[-1] == "GEN.12"
    assert "EXO.1" not in items and len(set(items)) == 50
    assert 23 * 3600 < sync_redis.ttl(key) <= 24 * 3600


BAD_EVENTS: list[tuple[dict[str, Any], str]] = [
    ({"signal_weight": 10}, "signal_weight"),
    ({"signal_weight": 0.1234}, "signal_weight"),
    ({"signal_weight": "NaN"}, "signal_weight"),
    ({"signal_weight": "Infinity"}, "signal_weight"),
    ({"signal_weight": "heavy"}, "signal_weight"),
    ({"occurred_at": "2026-11-20T08:30:00"}, "occurred_at"),
    ({"occurred_at": (datetime.now(UTC) + timedelta(days=2)).isoformat()}, "occurred_at"),
    ({"content_id": ""}, "content_id"),
    ({"content_id": "   "}, "content_id"),
    ({"content_id": "x" * 300}, "content_id"),
    ({"content_type": 5}, "content_type"),
    ({"signal_type": None}, "signal_type"),
    ({"user_id": "not-a-uuid"}, "user_id"),
    ({"session_id": "123"}, "session_id"),
    ({"client_event_id": "abc"}, "client_event_id"),
    ({"metadata": {"blob": "x" * 5000}}, "metadata"),
    ({"metadata": [1, 2]}, "metadata"),
    ({"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("patch", "field"), BAD_EVENTS)
async def test_bad_event_rejected_with_index_and_field(
    client: httpx.AsyncClient, db_url: str, patch: dict[str, Any], field: str
) -> None:
    uid = await _user(client)
    good, bad = _ev(uid), _ev(uid) | patch
    # Default: the valid event is stored, the bad one reported with its index.
    r = await client.post("/v1/events", json={"events": [good, bad]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1
    assert [x["index"] for x in body["rejected"]] == [1]
    assert field in {
        e["loc"][-1] if e["loc"][-1] != "__root__" else e["loc"][-2] for e in body["rejected"][0]["errors"]
    }
    assert body["rejected"][0]["errors"][0]["loc"][:3] == ["body", "events", 1]
    assert body["rejected"][0]["errors"][0]["field"].startswith("events.1")
    assert len(_rows(db_url)) == 1
    # atomic=true: nothing is written.
    r = await client.post("/v1/events?atomic=true", json={"events": [_ev(uid), _ev(uid) | patch]})
    assert r.status_code == 422, r.text
    assert any(d["loc"][:3] == ["body", "events", 1] for d in r.json()["detail"])
    assert len(_rows(db_url)) == 1


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"events": [', 400),
        (b'{"events": [{"signal_weight": NaN}]}', 400),
        (b"[]", 422),
        (b'{"events": []}', 422),
        (b'{"events": {}}', 422),
        (b'{"events": [], "extra": 1}', 422),
    ],
)
async def test_malformed_envelopes(client: httpx.AsyncClient, db_url: str, raw: bytes, status: int) -> None:
    r = await client.post("/v1/events", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["loc"][0] == "body"
    assert _rows(db_url) == []


async def test_batch_and_body_limits(platform: Platform, settings: Settings, db_url: str,
                                     make_client: AppClients) -> None:
    small = settings.replace(ingest={"max_batch_events": 3}, http={"max_body_bytes": 4096}, auth={"dev_mode": True})
    platform.ingestor.settings = small  # the limit is read from the ingestor's settings
    c = await make_client(small, platform)
    r = await c.post("/v1/events", json={"events": [_ev(None)] * 4})
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "events"
    r = await c.post("/v1/events", json={"events": [_ev(None, metadata={"a": "x" * 3000})] * 2})
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == ""

    # A chunked body (no Content-Length) is counted as it arrives.
    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000

    r = await c.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]
    r = await c.post(
        "/v1/events", content=b"{}", headers={"content-length": "x2", "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["detail"][0]["field"] == "content-length"
    assert _rows(db_url) == []


async def test_unknown_user(client: httpx.AsyncClient, db_url: str) -> None:
    uid = await _user(client)
    ghost = uuid.uuid4()
    r = await client.post("/v1/events", json={"events": [_ev(uid), _ev(ghost)]})
    assert r.json()["accepted"] == 1
    assert r.json()["rejected"] == [
        {
            "index": 1,
            "errors": [
                {
                    "loc": ["body", "events", 1, "user_id"],
                    "field": "events.1.user_id",
                    "msg": "user does not exist",
                    "type": "not_found",
                }
            ],
        }
    ]
    r = await client.post("/v1/events?atomic=true", json={"events": [_ev(uid), _ev(ghost)]})
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["body", "events", "1", "user_id"]
    assert len(_rows(db_url)) == 1


async def test_privacy_levels_on_ingest(client: httpx.AsyncClient, db_url: str, sync_redis: redis.Redis) -> None:
    std = await _user(client)
    lim = await _user(client, privacy_level="limited")
    prv = await _user(client, privacy_level="private")
    sess = str(uuid.uuid4())
    r = await client.post("/v1/events", json={"events": [_ev(std), _ev(lim, session_id=sess), _ev(prv)]})
    assert r.json()["accepted"] == 2 and r.json()["suppressed"] == [2]
    rows = {row[0]: row for row in _rows(db_url)}
    assert prv not in rows
    assert rows[lim][1] is None and rows[lim][6] is None  # session and metadata stripped
    assert rows[std][1] is not None and rows[std][6] == {"platform": "ios"}
    assert sync_redis.exists(keys.session_recent_content(sess)) == 0


async def test_library_group_commit_coalesces(platform: Platform, db_url: str) -> None:
    uid = uuid.uuid4()
    await platform.profiles.store.upsert(uid, {})
    before = metrics.GROUP_COMMIT_ROWS._sum.get()  # type: ignore[attr-defined]
    count_before = _hist_count()
    results = await asyncio.gather(*(platform.ingestor.ingest([_ev(uid)]) for _ in range(40)))
    assert all(r.accepted == 1 for r in results)
    # Every call returned only after its row was committed...
    assert len(_rows(db_url)) == 40
    # ...and the 40 concurrent calls shared far fewer transactions.
    assert metrics.GROUP_COMMIT_ROWS._sum.get() - before == 40  # type: ignore[attr-defined]
    assert _hist_count() - count_before < 40


def _hist_count() -> float:
    for metric in metrics.GROUP_COMMIT_ROWS.collect():
        for s in metric.samples:
            if s.name.endswith("_count"):
                return s.value
    raise AssertionError("no histogram count")


async def test_library_errors(platform: Platform, db_url: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        await platform.ingestor.ingest([_ev(None, signal_weight=99)], atomic=True)
    assert exc.value.errors[0].loc[:3] == ["body", "events", 0]
    with pytest.raises(NotFound):
        await platform.ingestor.ingest([_ev(uuid.uuid4())], atomic=True)
    assert _rows(db_url) == []


async def test_failed_commit_releases_claimed_ids(platform: Platform, db_url: str) -> None:
    """A replay check must not swallow the retry of a batch whose transaction failed."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'disk full (simulated)'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON personalization_events FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    e = _ev(None)
    with pytest.raises(StoreError):
        await platform.ingestor.ingest([e])
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse ON personalization_events")
    r = await platform.ingestor.ingest([e])
    assert r.accepted == 1 and r.duplicates == []


async def test_redis_down_still_stores(settings: Settings, db_url: str) -> None:
    down = settings.replace(redis={"url": "redis://127.0.0.1:1/0", "timeout_s": 0.05})
    async with open_platform(down) as p:
        r = await p.ingestor.ingest([_ev(None), _ev(None)])
    assert r.accepted == 2 and not r.dedup_available
    assert len(_rows(db_url)) == 2


def test_script_chunks_bound_items_per_call() -> None:
    from personalization.cache.events import _chunks

    assert _chunks([], 5) == []
    assert _chunks([3, 3, 3], 5) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert _chunks([1, 2, 2, 7, 1], 5) == [slice(0, 3), slice(3, 4), slice(4, 5)]
    assert _chunks([9], 5) == [slice(0, 1)]


async def test_large_group_spans_several_script_calls(platform: Platform, db_url: str, sync_redis: redis.Redis) -> None:
    """A group bigger than one script call still claims every id once and records every view."""
    users = [uuid.uuid4() for _ in range(3)]
    for u in users:
        await platform.profiles.store.upsert(u, {})
    sessions = [str(uuid.uuid4()) for _ in range(40)]
    batch = [_ev(users[i % 3], session_id=sessions[i % 40], content_id=f"PSA.{i % 150 + 1}") for i in range(1200)]
    r = await platform.ingestor.ingest(batch)
    assert r.accepted == 1200
    again = await platform.ingestor.ingest(batch[:700])
    assert again.accepted == 0 and len(again.duplicates) == 700
    assert sum(sync_redis.zcard(keys.user_signals(u)) for u in users) == 1200
    for s in sessions:
        distinct = {e["content_id"] for e in batch if e["session_id"] == s}
        assert set(sync_redis.lrange(keys.session_recent_content(s), 0, -1)) == distinct
