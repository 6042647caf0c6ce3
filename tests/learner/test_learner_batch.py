"""The batch path: the fast insert reader, binary COPY rows, and the column-wise fold.

The column-wise fold (numpy, all users of a batch at once) must give the state the per-user
reference functions of ``learner.model`` give, and the msgspec reader must agree with
``parse_event_message`` on every message it accepts (it hands everything else over).
"""

from __future__ import annotations

import json
import math
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import psycopg
import pytest

from personalization.core.decay import DEFAULT_DECAY
from personalization.errors import StoreError
from personalization.kafka import names
from personalization.kafka.envelope import (
    EPOCH,
    ONE_US,
    EventRecord,
    MalformedMessage,
    parse_event_message,
    read_insert_fast,
)
from personalization.learner.batch import BatchResult, ContentCache, Incoming, apply_batch
from personalization.learner.model import add_to_embedding, add_to_score, content_unit_vector
from personalization.store.learner import LearnerStore, ScoreBatch
from personalization.store.pgbinary import encode_rows
from personalization_dev.synthetic import SyntheticRow, envelope, key_for
from personalization_dev.testing.learner import fill_population, stream_order

USER = uuid.UUID("0b7c6a52-4d0e-4a41-9d53-2f1f3c1d9e11")
NOW = datetime(2026, 11, 1, 12, 30, 15, 123456, tzinfo=UTC)


def _doc() -> dict[str, Any]:
    row = SyntheticRow(41, USER, "john-3-16", "verse", "share", Decimal("0.250"), NOW, 900, 880, 77, 1_700_000_000_000)
    doc: dict[str, Any] = orjson.loads(envelope(row))
    return doc


def _variants() -> list[bytes]:
    """Plain inserts and many ways of not being one (or of being one oddly)."""
    out: list[bytes] = []

    def add(mutate: Any) -> None:
        doc = _doc()
        mutate(doc)
        # The standard library writes integers of any size (orjson stops at 64 bits).
        out.append(json.dumps(doc).encode())

    def after(field: str, value: Any) -> Any:
        return lambda d: d["after"].__setitem__(field, value)

    def source(field: str, value: Any) -> Any:
        return lambda d: d["source"].__setitem__(field, value)

    add(lambda d: None)
    for op in ("c", "r", "u", "d", "t", "m", "z", 5, None):
        add(lambda d, op=op: d.__setitem__("op", op))
    add(lambda d: d.__setitem__("after", None))
    add(lambda d: d.__setitem__("after", [1]))
    add(lambda d: d.__setitem__("source", "x"))
    add(lambda d: d.pop("source"))
    add(lambda d: d.__setitem__("schema", {}))
    add(lambda d: d.__setitem__("payload", {}))
    out.append(orjson.dumps({"schema": {}, "payload": _doc()}))
    for value in (None, 7, "", "users", "personalization_events"):
        add(source("table", value))
    for value in ('["1","2"]', '[null,"2"]', '["x","2"]', "[]", "1,2", '[" 12 ","2"]', ["3", "4"], [None, "4"], None):
        add(source("sequence", value))
    for value in (None, "12", 12.0, True, 1 << 63, -(1 << 63) - 1, 2**64 + 3):
        add(source("ts_ms", value))
        add(source("txId", value))
        add(source("lsn", value))
        add(after("event_id", value))
    add(lambda d: d["source"].pop("lsn"))
    for value in (None, "not-a-uuid", str(USER).upper(), "{" + str(USER) + "}", USER.hex, 5):
        add(after("user_id", value))
    for value in ("NaN", "inf", "-inf", "1e3", " 0.5 ", "0x10", "", 3, -2.5, True, None, 10**400, "1_000"):
        add(after("signal_weight", value))
    for value in (
        "2026-11-01T12:30:15",
        "2026-11-01T12:30:15+02:00",
        "2026-11-01 12:30:15Z",
        "2026-11-01",
        "yesterday",
        "2026-11-01T12:30:15.5-03:30",
        5,
    ):
        add(after("occurred_at", value))
    for field in ("content_id", "content_type", "signal_type"):
        for value in ("", None, 3, "x" * 300, "ünïcode"):
            add(after(field, value))
    base = envelope(SyntheticRow(1, USER, "c", "verse", "view", Decimal("1"), NOW, 1, 1, 1, 1))
    out.append(base.replace(b'"op":"c"', b'"op":"c","op":"u"'))
    out.append(base.replace(b'"op":"c"', b'"op":"u","op":"c"'))
    out.append(base.replace(b'"before":null', b'"before":' + b"[" * 1100 + b"]" * 1100))
    out.append(base.replace(b'"before":null', b'"before":' + b"[" * 900 + b"]" * 900))
    out.append(base.replace(b'"content_id":"c"', b'"content_id":"\\ud800"'))
    out.append(base.replace(b'"content_id":"c"', b'"content_id":"\xff"'))
    out.extend([b"", b"null", b"[]", b"{}", b"{", base + b"x", b" " + base + b" ", b"\xef\xbb\xbf" + base])
    return out


def test_fast_reader_agrees_with_parse_event_message() -> None:
    accepted = 0
    for value in _variants():
        fast = read_insert_fast(value)
        try:
            slow: Any = parse_event_message(key_for(USER), value)
        except MalformedMessage as exc:
            slow = exc
        if fast is None:
            continue
        accepted += 1
        assert isinstance(slow, EventRecord), (value[:200], slow)
        assert fast == (
            slow.user_id,
            slow.content_id,
            slow.content_type,
            slow.signal_type,
            slow.signal_weight,
            (slow.occurred_at - EPOCH) // ONE_US,
            slow.position,
            slow.commit_ts_ms,
            slow.tx_id,
        ), value[:200]
    # The plain inserts (and their harmless variants) take the fast path.
    assert accepted >= 20
    plain = read_insert_fast(orjson.dumps(_doc()))
    assert plain is not None and plain[0] == USER and plain[5] == (NOW - EPOCH) // ONE_US
    assert plain[6] == (900, 880, 41)


def test_binary_copy_rows_round_trip(db_url: str) -> None:
    users = [uuid.uuid4() for _ in range(3)]
    blobs = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)
    times = np.array([0, 1_700_000_000_123_456, -5], dtype=np.int64)
    data = encode_rows(
        [
            ("int2", np.array([1, -2, 3])),
            ("int4", np.array([4, 5, -6])),
            ("int8", np.array([2**40, 0, -1])),
            ("float8", np.array([0.5, -1e300, math.pi])),
            ("bool", np.array([True, False, True])),
            ("uuid", np.frombuffer(b"".join(u.bytes for u in users), dtype="V16")),
            ("timestamptz", times),
            ("bytea", blobs),
        ]
    )
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (a int2, b int4, c int8, d float8, e bool, f uuid, g timestamptz, h bytea)")
        with cur.copy("COPY t FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(data)
        rows = cur.execute("SELECT * FROM t").fetchall()
    assert [r[:5] for r in rows] == [(1, 4, 2**40, 0.5, True), (-2, 5, 0, -1e300, False), (3, -6, -1, math.pi, True)]
    assert [r[5] for r in rows] == users
    assert [r[6] for r in rows] == [EPOCH + timedelta(microseconds=int(us)) for us in times]
    assert [r[7] for r in rows] == [bytes(b) for b in blobs]
    with pytest.raises(ValueError):
        encode_rows([("int4", np.zeros(2)), ("int4", np.zeros(3))])


DIM = 8
TOPIC = names.events_topic("pz")


def test_batch_fold_equals_the_per_user_fold(db_url: str) -> None:
    """Uneven batches, two partitions, a relay re-send, a malformed message, content without
    vectors, a stored row of another dimension and a user below `standard`: the stored state
    equals the reference fold of each user's events."""
    pop = fill_population(
        db_url, users=12, contents=15, events=700, dim=DIM, seed=9, without_vectors=4, levels={3: "limited"}
    )
    stream = stream_order(pop.rows)
    odd_dim_user = pop.users[5]
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO user_embeddings (user_id, model, dim, raw_sum, ref_time, event_count, embedded_count) "
            "VALUES (%s, 'old', 4, %s, now(), 99, 99)",
            (odd_dim_user, np.ones(4).astype("<f8").tobytes()),
        )
    offsets = {0: 0, 1: 0}
    messages: list[Incoming] = []

    def send(partition: int, key: bytes | None, value: bytes | None) -> None:
        messages.append(Incoming(TOPIC, partition, offsets[partition], key, value, 1_700_000_000_000))
        offsets[partition] += 1

    def partition_of(user: uuid.UUID | None) -> int:
        return zlib.crc32(str(user).encode()) % 2

    for i, row in enumerate(stream):
        send(partition_of(row.user_id), key_for(row.user_id), envelope(row, topic_prefix="pz"))
        if i == 100:
            # A re-send of an earlier record (new offset, same position): dropped.
            again = stream[50]
            send(partition_of(again.user_id), key_for(again.user_id), envelope(again, topic_prefix="pz"))
            send(0, key_for(None), b"not json")
    store = LearnerStore(db_url)
    content = ContentCache(DIM)
    results: list[BatchResult] = []
    try:
        for lo, hi in ((0, 37), (37, 300), (300, len(messages))):
            with store.transaction() as tx:
                results.append(
                    apply_batch(
                        tx, messages[lo:hi], group_id="g", events_topic=TOPIC, decay=DEFAULT_DECAY, content=content
                    )
                )
    finally:
        store.close()
    outcomes: dict[str, int] = {}
    for r in results:
        for k, v in r.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    limited = pop.users[3]
    limited_events = sum(1 for r in stream if r.user_id == limited)
    assert outcomes["duplicate"] == 1 and outcomes["malformed"] == 1
    assert outcomes["applied"] == len(stream) - limited_events
    assert outcomes.get("privacy", 0) == limited_events

    with psycopg.connect(db_url) as conn:
        vectors = {
            cid: content_unit_vector(m, d, bytes(b), DIM)
            for cid, m, d, b in conn.execute("SELECT content_id, model, dim, embedding FROM content_embeddings")
        }
        scores = {
            (u, ct, st): (s, ref, n)
            for u, ct, st, s, ref, n in conn.execute(
                "SELECT user_id, content_type, signal_type, score, ref_time, event_count FROM user_signal_scores"
            )
        }
        embeddings = {
            u: (m, d, bytes(raw), ref, n, ne, None if e is None else bytes(e))
            for u, m, d, raw, ref, n, ne, e in conn.execute(
                "SELECT user_id, model, dim, raw_sum, ref_time, event_count, embedded_count, embedding "
                "FROM user_embeddings"
            )
        }
    expected_cells = 0
    for user in pop.users:
        rows = [r for r in stream if r.user_id == user]
        if user == limited or not rows:
            assert user not in embeddings
            assert not any(k[0] == user for k in scores)
            continue
        cells: dict[tuple[str, str], list[tuple[float, datetime]]] = {}
        for r in rows:
            cells.setdefault((r.content_type, r.signal_type), []).append((float(r.signal_weight), r.occurred_at))
        for (ct, st), evs in cells.items():
            expected_cells += 1
            ref_cell = add_to_score(None, DEFAULT_DECAY, st, evs)
            got = scores[(user, ct, st)]
            assert got[1] == ref_cell.ref_time and got[2] == ref_cell.event_count
            assert got[0] == pytest.approx(ref_cell.score, rel=1e-12, abs=1e-12)
        state = add_to_embedding(
            None,
            DEFAULT_DECAY,
            DIM,
            ((r.signal_type, float(r.signal_weight), r.occurred_at, vectors.get(r.content_id)) for r in rows),
        )
        model, dim, raw, ref, count, embedded, vector = embeddings[user]
        assert (model, dim, ref, count, embedded) == (
            state.model,
            DIM,
            state.ref_time,
            state.event_count,
            state.embedded_count,
        )
        assert np.allclose(np.frombuffer(raw, dtype="<f8"), state.raw, rtol=1e-12, atol=1e-12)
        assert vector == state.normalized()
        written = {u for r in results for u in r.redis_writes}
        assert user in written
    assert len(scores) == expected_cells
    # Rows for the freshness metric: the applied events of users whose key the batch writes
    # (a user whose events so far all lack a vector has no key yet).
    applied = [row for r in results for row in r.applied]
    assert 0.9 * outcomes["applied"] <= len(applied) <= outcomes["applied"]
    for r in results:
        assert all(row[0] in r.redis_writes for row in r.applied)
    occurred = {(r.user_id, r.occurred_at) for r in stream}
    assert all((u, t) in occurred for u, t, _, _ in applied)


def test_rows_that_moved_under_the_batch_fail_it(db_url: str) -> None:
    """The batch writes what it read under its locks; a row that is not where the read said
    (a bug or an outside writer) rolls the batch back instead of overwriting or losing state."""
    pop = fill_population(db_url, users=1, contents=1, events=0, dim=DIM)
    user_bytes = np.frombuffer(pop.users[0].bytes, dtype="V16")
    one = np.ones(1, dtype=np.int32)
    store = LearnerStore(db_url)
    try:
        for existed in (True, False):
            batch = ScoreBatch(
                users=user_bytes,
                content_type=one,
                signal_type=one,
                score=np.ones(1),
                ref_us=np.zeros(1, dtype=np.int64),
                event_count=np.ones(1, dtype=np.int64),
                existed=np.array([existed]),
                content_types=["verse"],
                signal_types=["view"],
            )
            if existed:
                # Said to exist, but there is no such row: nothing updated.
                with pytest.raises(StoreError, match="changed under the batch"), store.transaction() as tx:
                    tx.write_score_batch(batch)
            else:
                with store.transaction() as tx:
                    tx.write_score_batch(batch)
                # Said to be new, but it is there now: the insert finds a conflict.
                with pytest.raises(StoreError, match="changed under the batch"), store.transaction() as tx:
                    tx.write_score_batch(batch)
    finally:
        store.close()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), sum(event_count) FROM user_signal_scores").fetchone() == (1, 1)
