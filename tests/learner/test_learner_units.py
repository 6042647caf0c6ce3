"""Pure parts of the learner: envelope reading, snapshot visibility, order independence; CLI input."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from personalization.cli.learner import app as learner_app
from personalization.core.decay import DEFAULT_DECAY
from personalization.kafka.envelope import (
    EventRecord,
    Ignored,
    MalformedMessage,
    ProfileChange,
    UserErased,
    parse_event_message,
    parse_profile_message,
)
from personalization.learner.model import ContentVector, add_to_embedding, add_to_score
from personalization.learner.snapshots import visible_in_snapshot, widen
from personalization_dev.synthetic import SyntheticRow, envelope, key_for

USER = uuid.uuid4()
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _row(**kw: object) -> SyntheticRow:
    base: dict[str, object] = dict(
        event_id=7,
        user_id=USER,
        content_id="john-3-16",
        content_type="verse",
        signal_type="bookmark",
        signal_weight=Decimal("0.750"),
        occurred_at=NOW,
        commit_lsn=500,
        lsn=420,
        tx_id=99,
        commit_ts_ms=1,
    )
    base.update(kw)
    return SyntheticRow(**base)  # type: ignore[arg-type]


def test_insert_envelope_is_read_with_its_position() -> None:
    rec = parse_event_message(key_for(USER), envelope(_row()))
    assert isinstance(rec, EventRecord)
    assert rec.user_id == USER and rec.signal_weight == 0.75 and rec.occurred_at == NOW
    # (previous commit LSN, change LSN, event_id): a later transaction with a smaller change
    # LSN and a smaller event id still sorts after.
    later = parse_event_message(key_for(USER), envelope(_row(event_id=3, commit_lsn=600, lsn=410)))
    assert isinstance(later, EventRecord) and later.position > rec.position


def test_schema_wrapped_envelope_is_unwrapped() -> None:
    value = orjson.dumps({"schema": {}, "payload": orjson.loads(envelope(_row()))})
    assert isinstance(parse_event_message(key_for(USER), value), EventRecord)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\xff\x00", "not JSON"),
        (b"[1, 2]", "not a Debezium change envelope"),
        (orjson.dumps({"op": "z", "source": {}}), "unknown Debezium op"),
        (envelope(_row()).replace(b'"table":"personalization_events"', b'"table":"other"'), "table 'other'"),
        (envelope(_row()).replace(b'"0.750"', b'"NaN"'), "signal_weight"),
        (envelope(_row()).replace(b'"occurred_at":"', b'"occurred_at":"x'), "occurred_at"),
        (envelope(_row()).replace(b'"content_id":"john-3-16"', b'"content_id":""'), "content_id"),
        (envelope(_row()).replace(str(USER).encode(), b"not-a-uuid"), "user_id is not a UUID"),
    ],
)
def test_malformed_messages_name_the_problem(value: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        parse_event_message(key_for(USER), value)


def test_non_insert_changes_are_ignored_and_tombstones_erase() -> None:
    doc = orjson.loads(envelope(_row()))
    for op, reason in (("u", "update"), ("d", "delete"), ("t", "truncate")):
        got = parse_event_message(key_for(USER), orjson.dumps({**doc, "op": op}))
        assert got == Ignored(reason)  # type: ignore[arg-type]
    anonymous = orjson.dumps({**doc, "after": {**doc["after"], "user_id": None}})
    assert parse_event_message(key_for(None), anonymous) == Ignored("anonymous")
    assert parse_event_message(key_for(USER), None) == UserErased(USER)
    assert parse_event_message(key_for(None), None) == Ignored("tombstone")
    with pytest.raises(MalformedMessage):
        parse_event_message(b"{}", None)


def test_profile_changes() -> None:
    source = {"table": "user_profile", "lsn": 1}
    upd = orjson.dumps(
        {"op": "u", "before": None, "after": {"user_id": str(USER), "privacy_level": "limited"}, "source": source}
    )
    assert parse_profile_message(key_for(USER), upd) == ProfileChange(USER, deleted=False, privacy_level="limited")
    dele = orjson.dumps(
        {"op": "d", "before": {"user_id": str(USER), "privacy_level": "standard"}, "after": None, "source": source}
    )
    assert parse_profile_message(key_for(USER), dele) == ProfileChange(USER, deleted=True, privacy_level=None)


def test_snapshot_visibility_with_32_bit_xids() -> None:
    snap = "1000:1010:1003,1007"
    assert visible_in_snapshot(999, snap)
    assert visible_in_snapshot(1005, snap)
    assert not visible_in_snapshot(1003, snap)
    assert not visible_in_snapshot(1010, snap)
    assert not visible_in_snapshot(2000, snap)
    # Across an epoch boundary: xmax in epoch 1, the stream's 32-bit xid from epoch 0.
    epoch1 = 1 << 32
    snap2 = f"{epoch1 + 5}:{epoch1 + 10}:"
    assert widen(4_294_967_290, epoch1 + 10) == 4_294_967_290
    assert visible_in_snapshot(4_294_967_290, snap2)
    assert not visible_in_snapshot(12, snap2)


def test_folding_is_order_independent() -> None:
    rng = random.Random(4)
    events = [
        (
            rng.choice(["view", "skip", "share"]),
            rng.uniform(0.001, 1.0),
            NOW - timedelta(days=rng.uniform(0, 90)),
            ContentVector("m", np.asarray([rng.gauss(0, 1) for _ in range(4)])),
        )
        for _ in range(12)
    ]
    results = []
    for perm in itertools.islice(itertools.permutations(events), 0, 2000, 97):
        # Folded in uneven batches, as polls deliver them.
        state = None
        cell = None
        for chunk in (perm[:3], perm[3:4], perm[4:]):
            state = add_to_embedding(state, DEFAULT_DECAY, 4, chunk)
            cell = add_to_score(cell, DEFAULT_DECAY, "share", [(w, t) for _, w, t, _ in chunk])
        assert state is not None and cell is not None
        results.append((state.raw.copy(), cell.at(DEFAULT_DECAY, "share", NOW), state.ref_time))
    for raw, score, ref in results[1:]:
        assert np.allclose(raw, results[0][0], rtol=1e-12, atol=1e-15)
        assert score == pytest.approx(results[0][1], rel=1e-12)
        assert ref == results[0][2]


def test_recompute_cli_rejects_bad_input() -> None:
    runner = CliRunner()
    none = runner.invoke(learner_app, ["recompute"])
    assert none.exit_code == 2 and "--user" in none.output
    bad = runner.invoke(learner_app, ["recompute", "--user", "nope"])
    assert bad.exit_code == 2 and "not a UUID" in bad.output


def test_recompute_cli_unknown_user(db_url: str, redis_url: str) -> None:
    env = {"PERSONALIZATION_DATABASE_URL": db_url, "PERSONALIZATION_REDIS_URL": redis_url}
    user = uuid.uuid4()
    result = CliRunner().invoke(learner_app, ["recompute", "--user", str(user)], env=env)
    assert result.exit_code == 2 and f"user {user} not found" in result.output


def test_run_cli_rejects_bad_settings() -> None:
    result = CliRunner().invoke(learner_app, ["run"], env={"PERSONALIZATION_LEARNER_BATCH_MAX": "0"})
    assert result.exit_code == 2
    assert "PERSONALIZATION_LEARNER_BATCH_MAX" in result.output and len(result.output.strip().splitlines()) == 1


def test_run_cli_refuses_an_unmigrated_database(pg_admin_url: str) -> None:
    # The maintenance database exists but has no learner tables.
    env = {"PERSONALIZATION_DATABASE_URL": pg_admin_url, "PERSONALIZATION_LEARNER_METRICS_PORT": "0"}
    result = CliRunner().invoke(learner_app, ["run"], env=env)
    assert result.exit_code == 2 and "personalization db upgrade" in result.output
