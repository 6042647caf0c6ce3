"""A node's plan: roles, learner replicas, consumer groups, and the route without a supervisor."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest

from personalization.api.app import create_app
from personalization.composition import Platform
from personalization.config import Settings
from personalization.platform.components import (
    COMPONENTS,
    NodeOptions,
    UnknownRole,
    plan,
    register,
    worker,
)
from personalization.platform.lag import LagReader
from personalization.platform.state import ChildRecord


def test_roles_select_components_and_learners_are_numbered() -> None:
    opts = NodeOptions(port=8123, learners=2, learner_metrics_port=9500, run_token="run1")
    children = plan([], opts)
    assert [c.name for c in children] == ["api", "relay", "learner-1", "learner-2", "invalidator", "scheduler",
                                          "erasures", "invalidations"]
    assert [c.stop_stage for c in children] == [0, 1, 2, 2, 2, 2, 2, 2]
    erasures = next(c for c in children if c.name == "erasures")
    assert erasures.launch(0).argv[-3:] == ["workers", "run", "erasures"]
    assert erasures.lag == "pending_rows"
    api = children[0]
    assert api.url == "http://127.0.0.1:8123"
    assert api.launch(0).argv[-7:] == ["serve", "--host", "127.0.0.1", "--port", "8123", "--workers", "1"]
    # Metrics ports do not collide; configured services keep the stable group names.
    l1, l2 = (c.launch(0) for c in children[2:4])
    assert l1.argv[-1] == "9500" and l2.argv[-1] == "9501"
    assert l1.detail["kafka_group"] == l2.detail["kafka_group"] == "personalization-learner"
    assert "PERSONALIZATION_LEARNER_KAFKA_GROUP_ID" not in l1.env
    assert [c.name for c in plan(["learner", "api"], NodeOptions())] == ["api", "learner"]
    with pytest.raises(UnknownRole, match="unknown role 'worker'"):
        plan(["api", "worker"], opts)


def test_embedded_broker_gets_fresh_consumer_groups() -> None:
    lone = plan(["learner", "invalidator"], NodeOptions(embedded_broker=True, run_token="t"))
    first, second = lone[0].launch(0), lone[0].launch(1)
    # A lone learner: a new group per start (the embedded broker can lock up a group its
    # only member left); its positions are in PostgreSQL under the learner group.
    assert first.env["PERSONALIZATION_LEARNER_KAFKA_GROUP_ID"] == "personalization-learner.t.0"
    assert second.env["PERSONALIZATION_LEARNER_KAFKA_GROUP_ID"] == "personalization-learner.t.1"
    assert first.detail["learner_group"] == "personalization-learner"
    assert lone[1].launch(3).argv[-1] == "personalization-cache-invalidation.t.3"
    # Several learners share one group for the run, so they split the partitions.
    pair = plan(["learner"], NodeOptions(embedded_broker=True, learners=2, run_token="t"))
    assert {c.launch(5).env["PERSONALIZATION_LEARNER_KAFKA_GROUP_ID"] for c in pair} == {"personalization-learner.t"}


def test_registry_is_open_but_roles_are_unique() -> None:
    spec = worker("exposures", "exposure flusher", "experiments", "flush", lag="pending_rows",
                  detail={"pending_relation": "exposure_buffer", "pending_query": "pending_exposures"})
    register(spec)
    try:
        (child,) = plan(["exposures"], NodeOptions())
        assert (child.name, child.role, child.stop_stage, child.lag) == ("exposures", "exposures", 2, "pending_rows")
        launch = child.launch(0)
        assert launch.argv[-3:] == ["personalization.cli", "experiments", "flush"]
        assert launch.detail["pending_relation"] == "exposure_buffer"
        assert [c.name for c in plan([], NodeOptions())][-1] == "exposures"
        with pytest.raises(ValueError, match="already registered"):
            register(spec)
    finally:
        COMPONENTS.remove(spec)


async def test_healthz_platform_is_503_without_a_supervisor(
    platform: Platform, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The route reads the app's settings tree: its platform section names the data directory.
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(tmp_path / "elsewhere"))
    cfg = settings.replace(auth={"dev_mode": True}, platform={"data_dir": tmp_path})
    transport = httpx.ASGITransport(app=create_app(cfg, platform=platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/healthz/platform")
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert detail[0]["type"] == "unavailable" and "personalization up" in detail[0]["msg"]
    assert f"no platform state in {tmp_path / 'platform'}:" in detail[0]["msg"]


def test_lag_probes_of_a_backlog_table_and_the_nightly_ledger(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE test_outbox (id serial PRIMARY KEY)")
        conn.execute("INSERT INTO test_outbox DEFAULT VALUES; INSERT INTO test_outbox DEFAULT VALUES")
    services = {"PERSONALIZATION_DATABASE_URL": db_url}

    def record(lag: str, **detail: str) -> ChildRecord:
        return ChildRecord(name="w", role="w", state="up", pid=1, lag=lag, detail=detail)

    with LagReader(services) as reader:
        assert reader.read(record("pending_rows", pending_relation="public.test_outbox")) == {"pending": 2}
        assert reader.read(record("pending_rows", pending_relation="erasure_outbox")) == {
            "pending": None, "note": "table absent"
        }
        nightly = reader.read(record("nightly"))
        assert nightly == {"last_run_status": None, "last_run_started_at": None, "last_success_at": None,
                           "last_success_age_s": None}
    # An unreachable database is reported, not raised.
    with LagReader({"PERSONALIZATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}) as reader:
        assert "error" in reader.read(record("nightly"))
