"""Erase and export beside other sessions' temporary tables (issue 17, failure 1).

Temporary tables of other sessions live in ``pg_temp_N`` schemas that no other session can
read: the learner's batch tables (``learner_batch_scores`` has a ``user_id uuid``) and the
feature export's ``pit_assigned`` are there whenever those run, the normal deployment.  The
erase and the export find user tables in the catalogue and must skip them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from security_helpers import populate_user, rows_per_table
from typer.testing import CliRunner

from personalization.cli.main import app as cli_app
from personalization.composition import Platform
from personalization.config import NightlySettings, Settings
from personalization.datarights.worker import ErasureWorker
from personalization.kafka import names
from personalization.learner.consumer import Learner
from personalization.nightly.export import export_features
from personalization.nightly.job import NightlyJob
from personalization_dev.synthetic import produce, producer
from personalization_dev.testing.learner import fill_population, stream_order, wait_consumed

DIM = 8


@pytest.fixture
def other_session_temp_table(db_url: str) -> Iterator[psycopg.Connection[object]]:
    """Another session holding a temporary table with a uuid user_id column (and an unlogged real one)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE scratch_scores (user_id uuid NOT NULL, score float8)")
        conn.execute("INSERT INTO scratch_scores VALUES (gen_random_uuid(), 1.0)")
        yield conn


def _unlogged(db_url: str, uid: uuid.UUID) -> None:
    # An unlogged table is a real table every session reads: it must still be erased.
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE UNLOGGED TABLE later_cache (user_id uuid, v int)")
        conn.execute("INSERT INTO later_cache VALUES (%s, 1)", (uid,))


async def test_api_erase_and_export_beside_another_sessions_temp_table(
    other_session_temp_table: psycopg.Connection[object], open_client: httpx.AsyncClient,
    auth_client: httpx.AsyncClient, admin_headers: dict[str, str], db_url: str,
) -> None:
    uid, _ = await populate_user(open_client, events=4, sessions=1)
    _unlogged(db_url, uid)
    r = await auth_client.get(f"/v1/users/{uid}/export", headers=admin_headers)
    assert r.status_code == 200, r.text
    doc = orjson.loads(r.content)
    assert doc["events_count"] == 4
    assert doc["other_tables"]["public.later_cache"] == [{"user_id": str(uid), "v": 1}]
    assert not any("scratch" in name for name in doc["other_tables"])

    r = await auth_client.delete(f"/v1/users/{uid}", params={"erase": "true"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["outcome"] == "ok" and report["removed"]["public.later_cache"] == 1
    assert not any("pg_temp" in name or "scratch" in name for name in report["removed"])
    assert set(rows_per_table(db_url, uid).values()) == {0}
    # The other session's table is untouched.
    row = other_session_temp_table.execute("SELECT count(*) FROM scratch_scores").fetchone()
    assert row == (1,)


def test_cli_erase_and_export_beside_another_sessions_temp_table(
    other_session_temp_table: psycopg.Connection[object], db_url: str, redis_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (uid,))
        conn.execute("INSERT INTO personalization_events (user_id, session_id, content_id, content_type, "
                     "signal_type, signal_weight, occurred_at) VALUES (%s, %s, 'JHN.3', 'chapter', 'read', 0.5, now())",
                     (uid, uuid.uuid4()))
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    monkeypatch.setenv("PERSONALIZATION_ERASE_KAFKA_TOMBSTONES", "false")
    from personalization.config import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = tmp_path / "user.json"
        res = runner.invoke(cli_app, ["users", "export", str(uid), "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert orjson.loads(out.read_bytes())["events_count"] == 1
        # The CLI completes the rollups refresh itself (within --wait-s): exit 0, nothing pending.
        res = runner.invoke(cli_app, ["users", "erase", str(uid), "--yes", "--json"])
        assert res.exit_code == 0, res.output
        assert '"personalization_events":1' in res.stdout
    finally:
        get_settings.cache_clear()
    assert set(rows_per_table(db_url, uid).values()) == {0}


async def test_erase_and_export_while_the_learner_and_a_feature_export_run(
    open_client: httpx.AsyncClient, auth_client: httpx.AsyncClient, admin_headers: dict[str, str],
    db_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path, platform: Platform, auth_settings: Settings,
) -> None:
    prefix = f"tt{uuid.uuid4().hex[:8]}"
    topic = names.events_topic(prefix)
    group = f"g-{uuid.uuid4().hex[:8]}"
    pop = fill_population(db_url, users=4, contents=6, events=120, dim=DIM, seed=11)
    settings = Settings(
        database={"url": db_url},
        redis={"url": redis_url},
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
        learner={"group_id": group, "kafka_group_id": f"k-{uuid.uuid4().hex[:8]}", "session_timeout_ms": 3000,
                 "follow_profiles": False},
        embedding={"dim": DIM},
    )
    stop = threading.Event()
    learner = Learner(settings, stop=stop)
    learner_thread = threading.Thread(target=learner.run, daemon=True)
    learner_thread.start()

    # A feature export held between two chunks: its session keeps its temporary tables.
    NightlyJob(db_url, NightlySettings(timezone="UTC"), decay=settings.decay.config()).run()
    entities = tmp_path / "entities.csv"
    entities.write_text("user_id,event_timestamp\n" + "".join(f"{u},2099-01-01T00:00:00Z\n" for u in pop.users))
    in_chunk, release = threading.Event(), threading.Event()
    export_errors: list[BaseException] = []

    def on_rows(_n: int) -> None:
        in_chunk.set()
        release.wait(60)

    def run_export() -> None:
        try:
            export_features(db_url, entities, tmp_path / "train.parquet",
                            NightlySettings(timezone="UTC", export_chunk_rows=1), on_rows=on_rows)
        except BaseException as exc:  # reported by the assertion below
            export_errors.append(exc)

    export_thread = threading.Thread(target=run_export, daemon=True)
    export_thread.start()
    try:
        ends = produce(producer(kafka_bootstrap), topic, stream_order(pop.rows), topic_prefix=prefix)
        wait_consumed(db_url, group, topic, ends, timeout_s=60)
        assert in_chunk.wait(60)
        with psycopg.connect(db_url) as conn:
            temp = {r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname LIKE 'pg\\_temp\\_%%' AND c.relpersistence = 't'").fetchall()}
        assert {"learner_batch_scores", "pit_assigned"} <= temp, temp

        victim = pop.users[0]
        r = await auth_client.get(f"/v1/users/{victim}/export", headers=admin_headers)
        assert r.status_code == 200, r.text
        doc = orjson.loads(r.content)
        assert doc["other_tables"]["public.user_signal_scores"]
        r = await auth_client.delete(f"/v1/users/{victim}", params={"erase": "true"}, headers=admin_headers)
        # 202: everything but the rollups view is erased in the request; its refresh is the
        # erasure worker's (not run here: it would wait for the paused export's lock on the view).
        assert r.status_code == 202 and r.json()["pending"] == ["rollups"], r.text
        assert r.json()["removed"]["public.user_signal_scores"] > 0
        left = rows_per_table(db_url, victim)
        assert left.pop("public.user_signal_rollups") > 0 and set(left.values()) == {0}
        assert rows_per_table(db_url, pop.users[1])["public.user_signal_scores"] > 0
    finally:
        release.set()
        export_thread.join(60)
        stop.set()
        learner_thread.join(30)
    assert not export_errors, export_errors
    assert (tmp_path / "train.parquet").exists()
    # The export and the learner are done: the worker's refresh completes the erase.
    result = await ErasureWorker(platform.db, platform.redis, auth_settings).run_once()
    assert result.done == {"rollups": 1} and result.completed == 1, result
    assert set(rows_per_table(db_url, victim).values()) == {0}
