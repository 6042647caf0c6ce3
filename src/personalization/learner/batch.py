"""One poll batch: parse, deduplicate, fold into user state, store offsets (one transaction).

``apply_batch`` runs inside a :class:`~personalization.store.learner.LearnerTx`; the caller
commits, then writes Redis from the returned :class:`BatchResult`.  Exactly-once effects
come from three checks made under the partition's offset-row lock:

1. offset: a message below the stored ``next_offset`` was applied by an earlier batch
   (possibly of another member before a rebalance) and is skipped;
2. source position: a message at or below the partition's high-water position is a
   re-send of the at-least-once relay and is skipped (see ``kafka.envelope``);
3. recomputation snapshot: a record whose transaction is visible in the user's last
   ``learner recompute`` snapshot is already counted and is skipped.

Cost per event: a batch holds tens of thousands of events, so nothing is done per event
that can be done per batch.  Plain inserts are read by ``read_insert_fast`` into one tuple
each (``parse_event_message`` reads the rest); the events are then folded column by
column with numpy for all users at once (score cells via ``np.unique``/``bincount``,
embedding sums as blocks of weighted unit vectors summed per user), with the formulas of
``core.decay`` and the same results as the per-user fold of ``learner.model`` that
``learner recompute`` uses.  The changed rows go to PostgreSQL as one binary COPY per
table into session temp tables, then one UPDATE of the rows the batch read and one INSERT
of the new ones; stored rows come back as one row of packed columns.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple
from uuid import UUID

import numpy as np
import numpy.typing as npt

from personalization.core.decay import DecayConfig
from personalization.core.privacy import policy_for
from personalization.kafka.envelope import (
    EPOCH,
    ONE_US,
    EventRecord,
    FastInsert,
    Ignored,
    MalformedMessage,
    Position,
    ProfileChange,
    UserErased,
    parse_event_message,
    parse_profile_message,
    read_insert_fast,
)
from personalization.learner import metrics
from personalization.learner.model import (
    ContentVector,
    add_to_embedding,
    add_to_score,
    content_unit_vector,
)
from personalization.learner.snapshots import visible_in_snapshot
from personalization.store.learner import EmbeddingBatch, EmbeddingRow, LearnerTx, OffsetRow, ScoreBatch, ScoreRow

log = logging.getLogger(__name__)

__all__ = ["AppliedEvents", "BatchResult", "ContentCache", "Incoming", "Malformed", "apply_batch", "rebuild_user"]

_INT = operator.attrgetter("int")
_OFFSET = operator.attrgetter("offset")


class Incoming(NamedTuple):
    """One Kafka message as the batch sees it (a named tuple: one is built per message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # Message timestamp (ms; the producer's create time unless the topic says otherwise).
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that goes to the dead-letter topic."""

    message: Incoming
    error: str


@dataclass(frozen=True, slots=True)
class AppliedEvents:
    """Applied events whose user's key is written, column by column (one element per event).

    ``user_index`` points into ``users``; ``occurred_us`` is microseconds since the epoch;
    ``commit_ms`` (source.ts_ms) and ``kafka_ms`` (message timestamp) are NaN when absent.
    """

    users: list[UUID]
    user_index: npt.NDArray[np.int64]
    occurred_us: npt.NDArray[np.int64]
    commit_ms: npt.NDArray[np.float64]
    kafka_ms: npt.NDArray[np.float64]


@dataclass
class BatchResult:
    """What a committed batch asks of Redis and the metrics."""

    redis_writes: dict[UUID, bytes] = field(default_factory=dict)
    redis_deletes: set[UUID] = field(default_factory=set)
    malformed: list[Malformed] = field(default_factory=list)
    # Every applied event whose key is written (columns; see ``applied`` for rows).
    applied_events: list[AppliedEvents] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def applied(self) -> list[tuple[UUID, datetime, int | None, int | None]]:
        """(user, occurred_at, commit_ts_ms, kafka_ts_ms) of every applied event whose key is written."""
        rows: list[tuple[UUID, datetime, int | None, int | None]] = []
        for part in self.applied_events:
            for u, occ, com, kaf in zip(
                part.user_index.tolist(),
                part.occurred_us.tolist(),
                part.commit_ms.tolist(),
                part.kafka_ms.tolist(),
                strict=True,
            ):
                rows.append(
                    (
                        part.users[u],
                        EPOCH + timedelta(microseconds=occ),
                        None if math.isnan(com) else int(com),
                        None if math.isnan(kaf) else int(kaf),
                    )
                )
        return rows


@dataclass(slots=True)
class _Events:
    """The batch's events to apply: one ``FastInsert`` tuple per event, and its message timestamp."""

    rows: list[FastInsert] = field(default_factory=list)
    kafka_ts: list[int | None] = field(default_factory=list)

    def add_record(self, rec: EventRecord) -> None:
        self.rows.append(
            (
                rec.user_id,
                rec.content_id,
                rec.content_type,
                rec.signal_type,
                rec.signal_weight,
                (rec.occurred_at - EPOCH) // ONE_US,
                rec.position,
                rec.commit_ts_ms,
                rec.tx_id,
            )
        )
        self.kafka_ts.append(rec.kafka_ts_ms)


class ContentCache:
    """Content vectors by content id, refreshed when the import version changes or after ``max_age_s``.

    Only the online path caches; ``recompute`` always reads the table.
    """

    def __init__(self, dim: int, max_age_s: float = 30.0, max_entries: int = 500_000) -> None:
        """Cache unit vectors of ``dim`` values."""
        self.dim = dim
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._entries: dict[str, ContentVector | None] = {}
        self._version: object = None
        self._filled_at = time.monotonic()

    def check_version(self, version: object) -> None:
        """Drop everything when the import version moved (or the cache is too old)."""
        if version != self._version or time.monotonic() - self._filled_at > self._max_age_s:
            self._entries.clear()
            self._version = version
            self._filled_at = time.monotonic()

    def get_many(self, tx: LearnerTx, content_ids: set[str]) -> dict[str, ContentVector | None]:
        """Vectors of ``content_ids`` (None for content without a usable one)."""
        missing = [c for c in content_ids if c not in self._entries]
        if missing:
            rows = tx.content_vectors(missing)
            if len(self._entries) + len(missing) > self._max_entries:
                self._entries.clear()
            for cid in missing:
                row = rows.get(cid)
                self._entries[cid] = None if row is None else content_unit_vector(row[0], row[1], row[2], self.dim)
        return {c: self._entries.get(c) for c in content_ids}


def _parse(msg: Incoming, events_topic: str) -> EventRecord | UserErased | Ignored | ProfileChange:
    if msg.topic == events_topic:
        return parse_event_message(msg.key, msg.value)
    return parse_profile_message(msg.key, msg.value)


def apply_batch(
    tx: LearnerTx,
    messages: Sequence[Incoming],
    *,
    group_id: str,
    events_topic: str,
    decay: DecayConfig,
    content: ContentCache,
) -> BatchResult:
    """Fold ``messages`` into the state in ``tx`` and advance the stored offsets."""
    result = BatchResult()
    out = result.outcomes
    by_topic: dict[str, dict[int, list[Incoming]]] = defaultdict(lambda: defaultdict(list))
    for m in messages:
        by_topic[m.topic][m.partition].append(m)

    events = _Events()
    rows_append = events.rows.append
    ts_append = events.kafka_ts.append
    profile_changes: list[ProfileChange] = []
    for topic in sorted(by_topic):
        partitions = by_topic[topic]
        stored = tx.lock_offsets(group_id, topic, sorted(partitions))
        new_rows: list[OffsetRow] = []
        is_events = topic == events_topic
        for partition, msgs in sorted(partitions.items()):
            row = stored[partition]
            hw: Position | None = row.high_water
            last = row.next_offset - 1
            duplicates = 0
            for m in sorted(msgs, key=_OFFSET):
                if m.offset <= last:
                    out["stale"] += 1
                    continue
                last = m.offset
                if is_events and m.value is not None:
                    # The common case, without an object per message (see read_insert_fast).
                    fast = read_insert_fast(m.value)
                    if fast is not None:
                        if hw is not None and fast[6] <= hw:
                            duplicates += 1
                            continue
                        hw = fast[6]
                        rows_append(fast)
                        ts_append(m.timestamp_ms)
                        continue
                try:
                    parsed = _parse(m, events_topic)
                except MalformedMessage as exc:
                    log.warning("malformed message at %s[%d]@%d: %s", m.topic, m.partition, m.offset, exc)
                    result.malformed.append(Malformed(m, str(exc)))
                    out["malformed"] += 1
                    continue
                if isinstance(parsed, EventRecord):
                    if hw is not None and parsed.position <= hw:
                        duplicates += 1
                        continue
                    hw = parsed.position
                    parsed.kafka_ts_ms = m.timestamp_ms
                    events.add_record(parsed)
                elif isinstance(parsed, ProfileChange):
                    profile_changes.append(parsed)
                    out["profile"] += 1
                elif isinstance(parsed, UserErased):
                    # The erase flow already removed the user's rows (cascade); make sure the
                    # cache entry is gone too.
                    result.redis_deletes.add(parsed.user_id)
                    out["erased"] += 1
                else:
                    out[f"ignored_{parsed.reason}"] += 1
            if duplicates:
                out["duplicate"] += duplicates
            if last >= row.next_offset:
                new_rows.append(OffsetRow(partition, last + 1, hw))
        tx.save_offsets(group_id, topic, new_rows)

    if profile_changes:
        _apply_profile_changes(tx, profile_changes, result, decay, content.dim)
    if events.rows:
        _apply_events(tx, events, result, decay, content)
    return result


def _apply_profile_changes(
    tx: LearnerTx, changes: list[ProfileChange], result: BatchResult, decay: DecayConfig, dim: int
) -> None:
    """Deletes and privacy changes, judged by the profile as it is now (not as the message says)."""
    users = sorted({c.user_id for c in changes})
    for user_id in users:
        exists, level = tx.lock_user_for_rebuild(user_id)
        if not exists:
            # Deleted: ON DELETE CASCADE removed the rows; the cache entry must go too.
            result.redis_deletes.add(user_id)
            continue
        policy = policy_for(level)
        if not policy.personalize:
            # No learner state at all below `standard` (README, privacy levels).
            _drop_state(tx, [user_id])
            result.redis_deletes.add(user_id)
        elif not tx.load_embeddings([user_id]):
            # Personalization allowed and no embedding yet (new user, or consent given
            # again): build the user from the stored events, as `learner recompute` does.
            vector = rebuild_user(tx, user_id, level, decay, dim)
            if vector is not None:
                result.redis_writes[user_id] = vector
                result.redis_deletes.discard(user_id)


# Events per block of the embedding sum: blocks of 1024 x dim values stay in the CPU cache.
_CHUNK = 1024


def _codes(values: Sequence[str]) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Distinct values (first-seen order) and each value's position among them."""
    index = {v: i for i, v in enumerate(dict.fromkeys(values))}
    return list(index), np.fromiter(map(index.__getitem__, values), dtype=np.int32, count=len(values))


def _uuid_bytes(users: Sequence[UUID]) -> npt.NDArray[np.void]:
    return np.frombuffer(b"".join(u.bytes for u in users), dtype="V16")


def _decay_factor(
    dt_us: npt.NDArray[np.int64], half_life_s: npt.NDArray[np.float64] | float
) -> npt.NDArray[np.float64]:
    """``2 ** (-dt / half_life)`` with ``dt`` in microseconds (core.decay, vectorised)."""
    return np.exp2(-(dt_us.astype(np.float64) / 1e6) / half_life_s)


def _apply_events(
    tx: LearnerTx, events: _Events, result: BatchResult, decay: DecayConfig, content: ContentCache
) -> None:
    """Fold the batch's events into scores and embeddings, all users at once (numpy)."""
    out = result.outcomes
    user_col, cid_col, ct_col, st_col, weight_col, occ_col, _pos, commit_col, tx_col = zip(*events.rows, strict=True)
    n = len(user_col)
    # Users by their 128-bit value (hashing a UUID object runs Python code; an int does not).
    ints = [u.int for u in user_col]
    by_int = dict(zip(ints, user_col, strict=True))
    index = {k: i for i, k in enumerate(by_int)}
    users = list(by_int.values())
    uidx = np.fromiter(map(index.__getitem__, ints), dtype=np.int32, count=n)

    levels = tx.lock_users(sorted(users, key=_INT))
    known_users = [u for u in users if u in levels]
    snapshots = tx.rebuild_snapshots(sorted(known_users, key=_INT))
    known = np.fromiter((u in levels for u in users), dtype=bool, count=len(users))
    keep = known[uidx]
    unknown = n - int(np.count_nonzero(keep))
    if unknown:
        out["unknown_user"] += unknown
    if snapshots:
        snap_of = [snapshots.get(u) for u in users]
        for e in np.flatnonzero(keep).tolist():
            snap = snap_of[uidx[e]]
            txid = tx_col[e]
            if snap is not None and txid is not None and visible_in_snapshot(txid, snap):
                keep[e] = False
                out["rebuilt"] += 1
    if not keep.any():
        return

    # Learner state (scores and embedding) only for levels that permit personalization.
    personal = np.fromiter(
        (u in levels and policy_for(levels[u]).personalize for u in users), dtype=bool, count=len(users)
    )
    has_events = np.bincount(uidx[keep], minlength=len(users)) > 0
    no_state = np.flatnonzero(has_events & ~personal)
    if len(no_state):
        out["privacy"] += int(np.count_nonzero(keep & ~personal[uidx]))
        dropped = [users[i] for i in no_state]
        # The level may have changed before its profile message reached us.
        _drop_state(tx, dropped)
        result.redis_deletes.update(dropped)
    sel = np.flatnonzero(keep & personal[uidx])
    if not len(sel):
        return

    # The selected events, column by column.
    su_ids, su = np.unique(uidx[sel], return_inverse=True)
    su = su.astype(np.int64)
    state_users = [users[i] for i in su_ids]
    user_bytes = _uuid_bytes(state_users)
    pick = sel.tolist()
    if len(pick) == n:
        cids_sel, ct_sel, st_sel, occ_sel, weight_sel = cid_col, ct_col, st_col, occ_col, weight_col
    else:
        cids_sel = tuple(cid_col[i] for i in pick)
        ct_sel = tuple(ct_col[i] for i in pick)
        st_sel = tuple(st_col[i] for i in pick)
        occ_sel = tuple(occ_col[i] for i in pick)
        weight_sel = tuple(weight_col[i] for i in pick)
    ct_names, ct = _codes(ct_sel)
    st_names, st = _codes(st_sel)
    t = np.fromiter(occ_sel, dtype=np.int64, count=len(pick))
    weight_abs = np.abs(np.fromiter(weight_sel, dtype=np.float64, count=len(pick)))
    scale = np.array([decay.for_signal(s).scale for s in st_names], dtype=np.float64)
    half_life = np.array([decay.for_signal(s).half_life_s for s in st_names], dtype=np.float64)
    w = scale[st] * weight_abs

    _fold_scores(tx, su, ct, st, t, w, half_life, user_bytes, ct_names, st_names)
    vectors = _fold_embeddings(tx, su, t, w, cids_sel, state_users, user_bytes, decay, content)

    written = np.zeros(len(state_users), dtype=bool)
    for i, (user_id, vector) in enumerate(zip(state_users, vectors, strict=True)):
        if vector is None:
            result.redis_deletes.add(user_id)
        else:
            result.redis_writes[user_id] = vector
            written[i] = True
    applied = np.flatnonzero(written[su])
    if len(applied):
        chosen = [pick[i] for i in applied.tolist()]
        result.applied_events.append(
            AppliedEvents(
                users=state_users,
                user_index=su[applied],
                occurred_us=t[applied],
                commit_ms=np.array([_nan_if_none(commit_col[i]) for i in chosen], dtype=np.float64),
                kafka_ms=np.array([_nan_if_none(events.kafka_ts[i]) for i in chosen], dtype=np.float64),
            )
        )
    out["applied"] += len(sel)


def _nan_if_none(value: int | None) -> float:
    return math.nan if value is None else float(value)


def _fold_scores(
    tx: LearnerTx,
    su: npt.NDArray[np.int64],
    ct: npt.NDArray[np.int32],
    st: npt.NDArray[np.int32],
    t: npt.NDArray[np.int64],
    w: npt.NDArray[np.float64],
    half_life: npt.NDArray[np.float64],
    user_bytes: npt.NDArray[np.void],
    ct_names: list[str],
    st_names: list[str],
) -> None:
    """Score cells (user, content_type, signal_type): stored value rebased plus the batch's events."""
    n_ct, n_st = len(ct_names), len(st_names)
    cells, inv = np.unique((su * n_ct + ct) * n_st + st, return_inverse=True)
    inv = inv.astype(np.int64)
    n_cells = len(cells)
    cell_user = cells // (n_ct * n_st)
    cell_ct = ((cells // n_st) % n_ct).astype(np.int32)
    cell_st = (cells % n_st).astype(np.int32)
    latest = np.full(n_cells, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, inv, t)

    pos, old_score, old_ref, old_count = tx.batch_cell_scores(
        user_bytes[cell_user], cell_ct + 1, cell_st + 1, ct_names, st_names
    )
    existed = np.zeros(n_cells, dtype=bool)
    existed[pos] = True
    prev_score = np.zeros(n_cells, dtype=np.float64)
    prev_ref = latest.copy()
    prev_count = np.zeros(n_cells, dtype=np.int64)
    prev_score[pos], prev_ref[pos], prev_count[pos] = old_score, old_ref, old_count

    ref = np.maximum(prev_ref, latest)
    cell_half_life = half_life[cell_st]
    score = prev_score * _decay_factor(ref - prev_ref, cell_half_life)
    score += np.bincount(inv, weights=w * _decay_factor(ref[inv] - t, half_life[st]), minlength=n_cells)
    tx.write_score_batch(
        ScoreBatch(
            users=user_bytes[cell_user],
            content_type=cell_ct + 1,
            signal_type=cell_st + 1,
            score=score,
            ref_us=ref,
            event_count=prev_count + np.bincount(inv, minlength=n_cells),
            existed=existed,
            content_types=ct_names,
            signal_types=st_names,
        )
    )


def _fold_embeddings(
    tx: LearnerTx,
    su: npt.NDArray[np.int64],
    t: npt.NDArray[np.int64],
    w: npt.NDArray[np.float64],
    content_ids: Sequence[str],
    state_users: list[UUID],
    user_bytes: npt.NDArray[np.void],
    decay: DecayConfig,
    content: ContentCache,
) -> list[bytes | None]:
    """Embedding sums: stored sum rebased plus the batch's weighted unit vectors; returns Redis values."""
    dim = content.dim
    n_users = len(state_users)
    row_exists = np.zeros(n_users, dtype=bool)
    has_state = np.zeros(n_users, dtype=bool)
    raw = np.zeros((n_users, dim), dtype=np.float64)
    prev_ref = np.zeros(n_users, dtype=np.int64)
    prev_count = np.zeros(n_users, dtype=np.int64)
    prev_embedded = np.zeros(n_users, dtype=np.int64)
    prev_model: list[str | None] = [None] * n_users
    stored = tx.load_embedding_batch(sorted(state_users, key=_INT), dim)
    if len(stored.users):
        position = {b: k for k, b in enumerate(user_bytes.tolist())}
        rows = np.fromiter(map(position.__getitem__, stored.users.tolist()), dtype=np.int64, count=len(stored.users))
        row_exists[rows] = True
        use = stored.same_dim  # another dimension: start over, as the per-user fold does
        at = rows[use]
        has_state[at] = True
        raw[at] = stored.raw[use]
        prev_ref[at] = stored.ref_us[use]
        prev_count[at] = stored.event_count[use]
        prev_embedded[at] = stored.embedded_count[use]
        for r, j in zip(at.tolist(), np.flatnonzero(use).tolist(), strict=True):
            prev_model[r] = stored.models[j]

    cids, cidx = _codes(content_ids)
    vectors = content.get_many(tx, set(cids))
    matrix = np.zeros((len(cids), dim), dtype=np.float64)
    has_vec = np.zeros(len(cids), dtype=bool)
    model_names: dict[str, int] = {}
    content_model = np.zeros(len(cids), dtype=np.int32)
    for i, cid in enumerate(cids):
        vec = vectors.get(cid)
        if vec is not None:
            matrix[i] = vec.unit
            has_vec[i] = True
            content_model[i] = model_names.setdefault(vec.model, len(model_names) + 1)

    latest = np.full(n_users, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, su, t)
    ref = np.where(has_state, np.maximum(prev_ref, latest), latest)
    half_life = decay.embedding_half_life_s
    raw *= np.where(has_state, _decay_factor(ref - prev_ref, half_life), 1.0)[:, None]
    coef = w * _decay_factor(ref[su] - t, half_life)
    embedded_events = np.flatnonzero(has_vec[cidx])
    # Sum coef * unit vector per user in bounded blocks of events (sorted by user).
    order = embedded_events[np.argsort(su[embedded_events], kind="stable")]
    for start in range(0, len(order), _CHUNK):
        part = order[start : start + _CHUNK]
        block = matrix.take(cidx[part], axis=0)
        block *= coef[part, None]
        owner = su[part]
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        raw[owner[starts]] += np.add.reduceat(block, starts, axis=0)

    # The model of each user's last event with a vector (in batch order), else the stored one.
    last = np.full(n_users, -1, dtype=np.int64)
    np.maximum.at(last, su[embedded_events], embedded_events)
    for name in prev_model:
        if name is not None:
            model_names.setdefault(name, len(model_names) + 1)
    model = np.array([0 if m is None else model_names[m] for m in prev_model], dtype=np.int32)
    moved = last >= 0
    model[moved] = content_model[cidx[last[moved]]]

    norms = np.linalg.norm(raw, axis=1)
    valid = (norms != 0.0) & np.isfinite(norms)
    unit = np.zeros((n_users, dim), dtype="<f4")
    np.divide(raw, norms[:, None], out=unit, where=valid[:, None], casting="unsafe")
    tx.write_embedding_batch(
        EmbeddingBatch(
            users=user_bytes,
            model=model,
            dim=dim,
            raw=raw,
            ref_us=ref,
            event_count=np.where(has_state, prev_count, 0) + np.bincount(su, minlength=n_users),
            embedded_count=np.where(has_state, prev_embedded, 0)
            + np.bincount(su[embedded_events], minlength=n_users),
            has_embedding=valid,
            embedding=unit,
            existed=row_exists,
            models=list(model_names),
        )
    )
    return [unit[i].tobytes() if valid[i] else None for i in range(n_users)]


def _drop_state(tx: LearnerTx, user_ids: list[UUID]) -> None:
    tx.delete_embeddings(user_ids)
    tx.delete_scores(user_ids)


def rebuild_user(
    tx: LearnerTx,
    user_id: UUID,
    level: str | None,
    decay: DecayConfig,
    dim: int,
    *,
    on_events: Callable[[int], None] | None = None,
) -> bytes | None:
    """Replace ``user_id``'s state by a fold of its stored events; returns the new vector.

    The caller must hold the profile row FOR UPDATE (``lock_user_for_rebuild``), which waits
    for any learner batch that holds the user.  The snapshot the events were read in is
    saved, so the online learner skips stream records already counted here.
    """
    policy = policy_for(level)
    snapshot, rows = tx.user_events_with_snapshot(user_id)
    if on_events is not None:
        on_events(len(rows))
    tx.delete_scores([user_id])
    tx.delete_embeddings([user_id])
    tx.save_rebuild(user_id, snapshot)
    if not rows or not policy.personalize:
        return None
    grouped: dict[tuple[str, str], list[tuple[float, datetime]]] = defaultdict(list)
    for r in rows:
        grouped[(r["content_type"], r["signal_type"])].append((float(r["signal_weight"]), r["occurred_at"]))
    score_rows = []
    for (ct, st), evs in grouped.items():
        cell = add_to_score(None, decay, st, evs)
        score_rows.append(ScoreRow(user_id, ct, st, cell.score, cell.ref_time, cell.event_count))
    tx.upsert_scores(score_rows)
    raw_vectors = tx.content_vectors(sorted({r["content_id"] for r in rows}))
    vectors = {cid: content_unit_vector(m, d, b, dim) for cid, (m, d, b) in raw_vectors.items()}
    state = add_to_embedding(
        None,
        decay,
        dim,
        ((r["signal_type"], float(r["signal_weight"]), r["occurred_at"], vectors.get(r["content_id"])) for r in rows),
    )
    vector = state.normalized()
    tx.upsert_embeddings(
        [
            EmbeddingRow(
                user_id,
                state.model,
                state.dim,
                state.raw_bytes(),
                state.ref_time,
                state.event_count,
                state.embedded_count,
                vector,
            )
        ]
    )
    return vector


def record_outcomes(result: BatchResult) -> None:
    """Add a committed batch's outcome counts to the metrics."""
    for outcome, n in result.outcomes.items():
        metrics.MESSAGES.labels(outcome).inc(n)
    metrics.EVENTS_APPLIED.inc(result.outcomes.get("applied", 0))
    metrics.MALFORMED.inc(len(result.malformed))
