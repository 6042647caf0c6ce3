"""One decay configuration for every consumer (issue 14).

An operator's ``PERSONALIZATION_LEARNER_SIGNALS`` override must reach the online learner,
the nightly snapshot, the point-in-time feature export and the data-rights export alike:
each is run here through its CLI entry point with the override in the environment, on the
same events, and their decayed values are compared with each other and with the formula.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from personalization.cli.main import app
from personalization.config import get_settings
from personalization.core.decay import DEFAULT_DECAY, DecayConfig, SignalDecay, event_score

# Far from the defaults (read: scale 1, 14 days; skip: scale -1, 3 days).
OVERRIDE = {"read": {"scale": 2.5, "half_life_s": 6 * 3600}, "skip": {"scale": -4.0, "half_life_s": 2 * 3600}}
TUNED = DecayConfig(signals={**DEFAULT_DECAY.signals,
                             "read": SignalDecay(2.5, 6 * 3600), "skip": SignalDecay(-4.0, 2 * 3600)})


@pytest.fixture
def env(db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = {"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_REDIS_URL": redis_url,
              "PERSONALIZATION_LEARNER_SIGNALS": json.dumps(OVERRIDE), "PERSONALIZATION_NIGHTLY_TIMEZONE": "UTC",
              "PERSONALIZATION_ERASE_KAFKA_TOMBSTONES": "false"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_learner_nightly_and_exports_share_the_override(env: dict[str, str], tmp_path: Path) -> None:
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    user = uuid.uuid4()
    # Events before today's midnight (the nightly decay reference), an hour apart.
    events = [("passage", "read", 0.5, midnight - timedelta(hours=2)),
              ("passage", "read", 1.0, midnight - timedelta(hours=9)),
              ("passage", "skip", 0.8, midnight - timedelta(hours=3))]
    with psycopg.connect(env["PERSONALIZATION_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO user_profile (user_id, privacy_level) VALUES (%s, 'standard')", (user,))
        conn.cursor().executemany(
            "INSERT INTO personalization_events (user_id, content_id, content_type, signal_type, signal_weight,"
            " occurred_at) VALUES (%s, 'C1', %s, %s, %s, %s)",
            [(user, ct, st, Decimal(str(w)), t) for ct, st, w, t in events])

        # The online learner's definition of state (recompute is what its stream state must match).
        _invoke("learner", "recompute", "--user", str(user))
        learner_rows: list[Any] = conn.execute(
            "SELECT signal_type, score, ref_time FROM user_signal_scores WHERE user_id = %s", (user,)).fetchall()
        nightly_run = json.loads(_invoke("jobs", "nightly", "--json"))
        nightly_rows: list[Any] = conn.execute(
            "SELECT signal_type, decayed_weight FROM feature_store.user_signal_features"
            " WHERE as_of = %s AND user_id = %s", (nightly_run["as_of"], user)).fetchall()

    entities = tmp_path / "entities.csv"
    # The point-in-time join takes snapshots computed before the entity row's time.
    entities.write_text(f"user_id,event_timestamp\n{user},{datetime.now(UTC).isoformat()}\n")
    out = tmp_path / "features.parquet"
    _invoke("features", "export", "--entities", str(entities), "--out", str(out), "--json")
    (row,) = pq.read_table(out).to_pylist()
    exported = {r["signal_type"]: r["decayed_weight"] for r in row["rollups"]}

    doc_path = tmp_path / "user.json"
    _invoke("users", "export", str(user), "--out", str(doc_path))
    doc = json.loads(doc_path.read_text())
    doc_at = datetime.fromisoformat(doc["decayed_scores"]["at"])
    doc_scores = {s["signal_type"]: s["score"] for s in doc["decayed_scores"]["scores"]}

    def expected(signal_type: str, at: datetime, cfg: DecayConfig = TUNED) -> float:
        return sum(event_score(cfg, st, w, t, at) for _, st, w, t in events if st == signal_type)

    learner = {st: score * 2 ** (-(midnight - ref).total_seconds() / TUNED.for_signal(st).half_life_s)
               for st, score, ref in learner_rows}
    nightly = {st: float(w) for st, w in nightly_rows}
    assert set(learner) == set(nightly) == set(doc_scores) == {"read", "skip"}
    for st in ("read", "skip"):
        want = expected(st, midnight)
        # The override changes the value a lot: a consumer on the defaults cannot pass by rounding.
        assert abs(want - expected(st, midnight, DEFAULT_DECAY)) > 0.1 * abs(want)
        assert learner[st] == pytest.approx(want, rel=1e-9), "learner"
        assert nightly[st] == pytest.approx(want, rel=1e-9), "nightly snapshot"
        assert exported[st] == pytest.approx(want, rel=1e-9), "feature export"
        assert doc_scores[st] == pytest.approx(expected(st, doc_at), rel=1e-9), "data-rights export"
