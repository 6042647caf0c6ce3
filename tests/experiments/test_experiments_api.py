"""Experiments over HTTP against the real PostgreSQL and Redis: metrics, exposures, phases, results."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import numpy as np
import psycopg
import pytest
import redis
from experiment_helpers import add_events, count_exposures, exposures, make_readers

from personalization.cache import keys
from personalization.composition import Platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser
from personalization.experiments.stats import ArmMoments, analyse

BOOKMARKS = {"signal_types": ["bookmark"], "aggregation": "count", "window_days": 7}


async def test_metric_definitions_crud_and_bad_input(client: httpx.AsyncClient, db_url: str) -> None:
    r = await client.put("/v1/metrics/bookmarks", json=BOOKMARKS)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "bookmarks" and r.json()["content_types"] is None
    r = await client.put(
        "/v1/metrics/bookmarks", json={**BOOKMARKS, "content_types": ["devotional"], "aggregation": "any"}
    )
    assert r.status_code == 200 and r.json()["aggregation"] == "any"
    await client.put("/v1/metrics/reading", json={"signal_types": ["read"], "aggregation": "sum_weight"})
    assert [m["name"] for m in (await client.get("/v1/metrics")).json()["metrics"]] == ["bookmarks", "reading"]
    got = (await client.get("/v1/metrics/bookmarks")).json()
    assert got["content_types"] == ["devotional"] and got["window_days"] == 7

    bad = [
        ({"signal_types": []}, "signal_types"),
        ({"signal_types": ["bookmark"], "aggregation": "median"}, "aggregation"),
        ({"signal_types": ["bookmark"], "window_days": 0}, "window_days"),
        ({"signal_types": ["bookmark"], "window_days": 7, "extra": 1}, "extra"),
        ({"signal_types": ["bookmark"], "content_types": []}, "content_types"),
    ]
    for body, field in bad:
        r = await client.put("/v1/metrics/broken", json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(e["field"] == field for e in r.json()["detail"]), (field, r.json())
    r = await client.put("/v1/metrics/Bad Name", json=BOOKMARKS)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "name"
    assert (await client.get("/v1/metrics/broken")).status_code == 404
    with psycopg.connect(db_url) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM experiment_metrics ORDER BY name")]
    assert names == ["bookmarks", "reading"]  # nothing written by the bad requests

    assert (await client.delete("/v1/metrics/reading")).status_code == 204
    r = await client.delete("/v1/metrics/reading")
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "name"


async def test_exposure_once_per_phase_from_every_read(
    client: httpx.AsyncClient, db_url: str, sync_redis: redis.Redis
) -> None:
    a, b, c = make_readers(db_url, 3)
    r = await client.put("/v1/flags/new-home", json={"enabled": True, "rollout_percent": 50})
    assert r.status_code == 200
    first = (await client.get(f"/v1/users/{a}/flags/new-home")).json()
    assert first["source"] == "evaluated"
    got = exposures(db_url, "new-home")
    assert got[a][:3] == (1, first["variant"], "rollout")
    # The cached value says the exposure is durable: the next read is served from Redis.
    assert str(sync_redis.get(keys.feature_flag("new-home", a))).endswith(":e")
    again = (await client.get(f"/v1/users/{a}/flags/new-home")).json()
    assert again["source"] == "cache"
    assert exposures(db_url, "new-home")[a] == got[a]
    assert count_exposures(db_url, "new-home") == 1

    # Login pre-warm and rerank record the personalization flag.
    r = await client.post(f"/v1/users/{b}/login")
    assert r.status_code == 200
    session = uuid.uuid4()
    r = await client.post(
        f"/v1/users/{c}/rerank", json={"session_id": str(session), "candidates": [{"content_id": "JHN.3"}]}
    )
    assert r.status_code == 200
    pz = exposures(db_url, "personalization")
    assert set(pz) == {b, c} and all(v[1] == "on" and v[2] == "rollout" for v in pz.values())
    r = await client.post(
        f"/v1/users/{c}/rerank", json={"session_id": str(session), "candidates": [{"content_id": "JHN.3"}]}
    )
    assert count_exposures(db_url, "personalization") == 2

    # A description change keeps the phase; a split change starts phase 2.
    await client.put(
        "/v1/flags/new-home", json={"enabled": True, "rollout_percent": 50, "description": "home screen v2"}
    )
    await client.get(f"/v1/users/{a}/flags/new-home")
    assert count_exposures(db_url, "new-home") == 1
    await client.put("/v1/flags/new-home", json={"enabled": True, "rollout_percent": 100})
    third = (await client.get(f"/v1/users/{a}/flags/new-home")).json()
    assert third["variant"] == "on"
    summary = (await client.get("/v1/experiments/new-home")).json()
    assert [p["phase"] for p in summary["phases"]] == [1, 2]
    assert summary["phases"][0]["rules_versions"] == [1, 2]
    assert summary["phases"][1]["rules_versions"] == [3, None]
    assert summary["phases"][1]["exposures"] == [{"variant": "on", "reason": "rollout", "users": 1}]
    assert count_exposures(db_url, "new-home") == 2
    assert (await client.get("/v1/experiments/no-such-flag")).status_code == 404


def _per_user_values(
    rng: np.random.Generator, n: int, lift: float
) -> tuple[np.ndarray, np.ndarray]:
    pre = rng.poisson(2.0, n)
    post = rng.poisson(1.0 + 0.6 * pre * (1 + lift))
    return post.astype(float), pre.astype(float)


async def test_results_route_matches_the_statistics_on_the_raw_data(client: httpx.AsyncClient, db_url: str) -> None:
    readers = make_readers(db_url, 240)
    await client.put("/v1/flags/reading-plan", json={"enabled": True, "rollout_percent": 50})
    await client.put("/v1/metrics/bookmarks", json={**BOOKMARKS, "content_types": ["devotional"]})
    for u in readers:
        assert (await client.get(f"/v1/users/{u}/flags/reading-plan")).status_code == 200
    with psycopg.connect(db_url) as conn:
        # The readers were exposed ten days ago: their whole window is in the past.
        conn.execute("UPDATE experiment_exposures SET first_exposed_at = first_exposed_at - interval '10 days'")
    exp = exposures(db_url, "reading-plan")
    rng = np.random.default_rng(7)
    rows = []
    # Per aggregation and variant: the per-reader (y, x) values the events below imply.
    values: dict[str, dict[str, tuple[list[float], list[float]]]] = {
        agg: {"off": ([], []), "on": ([], [])} for agg in ("count", "sum_weight", "any")
    }
    for u in readers:
        _, variant, _, t0 = exp[u]
        y, x = _per_user_values(rng, 1, 0.2 if variant == "on" else 0.0)
        ny, nx = int(y[0]), int(x[0])
        weight = [0.5 if k % 2 else 1.0 for k in range(max(ny, nx))]
        for agg, vy, vx in (
            ("count", ny, nx),
            ("sum_weight", sum(weight[:ny]), sum(weight[:nx])),
            ("any", float(ny > 0), float(nx > 0)),
        ):
            values[agg][variant][0].append(float(vy))
            values[agg][variant][1].append(float(vx))
        for k in range(ny):
            rows.append((u, "bookmark", "devotional", weight[k], t0 + timedelta(hours=1 + k)))
        for k in range(nx):
            rows.append((u, "bookmark", "devotional", weight[k], t0 - timedelta(days=2, minutes=k)))
        # Outside the window, another signal, another content type: none of them count.
        rows.append((u, "bookmark", "devotional", 1.0, t0 + timedelta(days=7, seconds=1)))
        rows.append((u, "bookmark", "devotional", 1.0, t0 - timedelta(days=7, seconds=1)))
        rows.append((u, "share", "devotional", 1.0, t0 + timedelta(hours=2)))
        rows.append((u, "bookmark", "chapter", 1.0, t0 + timedelta(hours=3)))
    add_events(db_url, rows)

    for agg in ("sum_weight", "any"):
        body = {**BOOKMARKS, "aggregation": agg, "content_types": ["devotional"]}
        assert (await client.put(f"/v1/metrics/bm-{agg}", json=body)).status_code == 201
    for agg, name, cuped in (
        ("count", "bookmarks", False), ("count", "bookmarks", True), ("sum_weight", "bm-sum_weight", True),
        ("any", "bm-any", False),
    ):
        arms = {}
        for v in ("off", "on"):
            y, x = np.array(values[agg][v][0]), np.array(values[agg][v][1])
            arms[v] = ArmMoments(v, len(y), y.sum(), (y * y).sum(), x.sum(), (x * x).sum(), (x * y).sum())
        r = await client.get(
            "/v1/experiments/reading-plan/results", params={"metric": name, "cuped": str(cuped).lower()}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["flag"] == "reading-plan" and body["metric"] == name and body["phase"] == 1
        assert body["warning"] is None and body["expected_split"] == {"off": 0.5, "on": 0.5}
        for got, v in zip(body["variants"], ("off", "on"), strict=True):
            y = np.array(values[agg][v][0])
            assert got["variant"] == v and got["users"] == len(y)
            assert got["mean"] == pytest.approx(y.mean()) and got["variance"] == pytest.approx(y.var(ddof=1))
        want = analyse(arms["off"], arms["on"], on_share=0.5, cuped=cuped)
        assert want.uplift is not None
        assert body["relative_uplift"]["estimate"] == pytest.approx(want.uplift.estimate)
        assert body["relative_uplift"]["ci95"] == pytest.approx(list(want.uplift.ci95))
        assert body["relative_uplift"]["p_value"] == pytest.approx(want.uplift.p_value)
        assert body["srm_p_value"] == pytest.approx(want.srm_p_value)
        assert body["chance_to_win"] == pytest.approx(want.chance_to_win)

    r = await client.get("/v1/experiments/reading-plan/results", params={"metric": "nope"})
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "metric"
    r = await client.get("/v1/experiments/nope/results", params={"metric": "bookmarks"})
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "flag"
    r = await client.get("/v1/experiments/reading-plan/results", params={"metric": "bookmarks", "phase": 2})
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "phase"
    r = await client.get("/v1/experiments/reading-plan/results")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "metric"


async def test_too_few_readers_is_a_warning_without_p_value(client: httpx.AsyncClient, db_url: str) -> None:
    readers = make_readers(db_url, 6)
    await client.put("/v1/flags/tiny", json={"enabled": True, "rollout_percent": 50})
    await client.put("/v1/metrics/bookmarks", json=BOOKMARKS)
    for u in readers:
        await client.get(f"/v1/users/{u}/flags/tiny")
    r = await client.get("/v1/experiments/tiny/results", params={"metric": "bookmarks"})
    assert r.status_code == 200
    body = r.json()
    assert "too few readers" in body["warning"]
    assert body["relative_uplift"]["p_value"] is None and body["chance_to_win"] is None
    assert sum(v["users"] for v in body["variants"]) == 6


async def test_privacy_levels_erase_and_export(
    client: httpx.AsyncClient, db_url: str, platform: Platform, settings: Settings
) -> None:
    (private,) = make_readers(db_url, 1, "private")
    (limited,) = make_readers(db_url, 1, "limited")
    for u in (private, limited):
        r = await client.post(
            f"/v1/users/{u}/rerank", json={"session_id": str(uuid.uuid4()), "candidates": [{"content_id": "A"}]}
        )
        assert r.json()["variant"] == "non_personalized" and r.json()["reason"] == "privacy"
    got = exposures(db_url, "personalization")
    # Both are assigned and counted (the flag says on); the private reader's time is only its day.
    assert got[private][1] == "on" and got[limited][1] == "on"
    t = got[private][3]
    assert (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0)

    r = await client.get(f"/v1/users/{limited}/export")
    assert r.status_code == 200
    assert r.json()["other_tables"]["public.experiment_exposures"][0]["flag"] == "personalization"
    # This test has no Kafka: the erase without its tombstones step.
    eraser = Eraser(platform.db, platform.redis, settings.replace(erase={"kafka_tombstones": False}))
    report = await eraser.erase(limited, "test")
    assert report.removed["public.experiment_exposures"] == 1
    assert set(exposures(db_url, "personalization")) == {private}


async def test_a_reader_recreated_under_the_same_id_is_exposed_again(
    client: httpx.AsyncClient, db_url: str
) -> None:
    (reader,) = make_readers(db_url, 1)
    assert (await client.post(f"/v1/users/{reader}/login")).status_code == 200
    assert (await client.post(f"/v1/users/{reader}/login")).status_code == 200
    assert count_exposures(db_url, "personalization") == 1
    # A plain profile delete cascades to the exposures; the cached, marked flag value of the
    # old reader must not stand for the new one.
    assert (await client.delete(f"/v1/users/{reader}")).status_code == 204
    assert count_exposures(db_url, "personalization") == 0
    assert (await client.put(f"/v1/users/{reader}", json={})).status_code == 201
    for _ in range(2):
        assert (await client.get(f"/v1/users/{reader}/flags/personalization")).status_code == 200
    assert count_exposures(db_url, "personalization") == 1
