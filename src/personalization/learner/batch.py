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
column with numpy for all users at once by :mod:`personalization.learner.fold`, with the
same results as the per-user rebuild of :mod:`personalization.learner.recompute` (which
this module calls when a profile change asks for a rebuild).  The changed rows go to
PostgreSQL as one binary COPY per table into session temp tables, then one UPDATE of the
rows the batch read and one INSERT of the new ones.
"""

from __future__ import annotations

import logging
import math
import operator
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import numpy as np
import numpy.typing as npt

from personalization.core.decay import DecayConfig
from personalization.core.privacy import policy_for
from personalization.kafka.consumer import Incoming
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
from personalization.learner.fold import ContentCache, codes, fold_embeddings, fold_scores, uuid_bytes
from personalization.learner.recompute import rebuild_user
from personalization.learner.snapshots import visible_in_snapshot
from personalization.store.learner import LearnerTx, OffsetRow

log = logging.getLogger(__name__)

__all__ = ["AppliedEvents", "BatchResult", "ContentCache", "Incoming", "Malformed", "apply_batch", "record_outcomes"]

_INT = operator.attrgetter("int")
_OFFSET = operator.attrgetter("offset")


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
    signal_types: frozenset[str] | None = None,
) -> BatchResult:
    """Fold ``messages`` into the state in ``tx`` and advance the stored offsets.

    ``signal_types``: the types that are scored (the deployment's registry, see
    core.signals); events of any other type are counted ``unknown_signal`` and skipped.
    None scores every type (with the default decay where it has none).
    """
    result = BatchResult()
    by_topic: dict[str, dict[int, list[Incoming]]] = defaultdict(lambda: defaultdict(list))
    for m in messages:
        by_topic[m.topic][m.partition].append(m)

    events = _Events()
    profile_changes: list[ProfileChange] = []
    for topic in sorted(by_topic):
        partitions = by_topic[topic]
        stored = tx.lock_offsets(group_id, topic, sorted(partitions))
        new_rows: list[OffsetRow] = []
        for partition, msgs in sorted(partitions.items()):
            row = stored[partition]
            last, hw = _read_partition(msgs, row, topic == events_topic, events_topic, result, events,
                                       profile_changes)
            if last >= row.next_offset:
                new_rows.append(OffsetRow(partition, last + 1, hw))
        tx.save_offsets(group_id, topic, new_rows)

    if profile_changes:
        _apply_profile_changes(tx, profile_changes, result, decay, content.dim, signal_types)
    if events.rows:
        _apply_events(tx, events, result, decay, content, signal_types)
    return result


def _read_partition(
    msgs: list[Incoming],
    row: OffsetRow,
    is_events: bool,
    events_topic: str,
    result: BatchResult,
    events: _Events,
    profile_changes: list[ProfileChange],
) -> tuple[int, Position | None]:
    """Sort one partition's messages into ``events``, ``profile_changes`` and ``result``.

    Skips what the stored offset or high-water position says was applied; returns the last
    offset read and the new high-water position.
    """
    out = result.outcomes
    rows_append = events.rows.append
    ts_append = events.kafka_ts.append
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
    return last, hw


def _apply_profile_changes(
    tx: LearnerTx, changes: list[ProfileChange], result: BatchResult, decay: DecayConfig, dim: int,
    signal_types: frozenset[str] | None,
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
            vector = rebuild_user(tx, user_id, level, decay, dim, signal_types=signal_types)
            if vector is not None:
                result.redis_writes[user_id] = vector
                result.redis_deletes.discard(user_id)


def _apply_events(
    tx: LearnerTx, events: _Events, result: BatchResult, decay: DecayConfig, content: ContentCache,
    signal_types: frozenset[str] | None,
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

    sel = _select(tx, users, uidx, tx_col, result, _typed(st_col, signal_types))
    if not len(sel):
        return

    # The selected events, column by column.
    su_ids, su = np.unique(uidx[sel], return_inverse=True)
    su = su.astype(np.int64)
    state_users = [users[i] for i in su_ids]
    user_bytes = uuid_bytes(state_users)
    pick = sel.tolist()
    if len(pick) == n:
        cids_sel, ct_sel, st_sel, occ_sel, weight_sel = cid_col, ct_col, st_col, occ_col, weight_col
    else:
        cids_sel = tuple(cid_col[i] for i in pick)
        ct_sel = tuple(ct_col[i] for i in pick)
        st_sel = tuple(st_col[i] for i in pick)
        occ_sel = tuple(occ_col[i] for i in pick)
        weight_sel = tuple(weight_col[i] for i in pick)
    ct_names, ct = codes(ct_sel)
    st_names, st = codes(st_sel)
    t = np.fromiter(occ_sel, dtype=np.int64, count=len(pick))
    weight_abs = np.abs(np.fromiter(weight_sel, dtype=np.float64, count=len(pick)))
    scale = np.array([decay.for_signal(s).scale for s in st_names], dtype=np.float64)
    half_life = np.array([decay.for_signal(s).half_life_s for s in st_names], dtype=np.float64)
    w = scale[st] * weight_abs

    fold_scores(tx, su, ct, st, t, w, half_life, user_bytes, ct_names, st_names)
    vectors = fold_embeddings(tx, su, t, w, cids_sel, state_users, user_bytes, decay, content)

    _record_vectors(result, state_users, vectors, su, t, pick, commit_col, events)
    out["applied"] += len(sel)


def _typed(
    st_col: Sequence[str], signal_types: frozenset[str] | None
) -> npt.NDArray[np.bool_] | None:
    """Which events have a scored signal type; None when all have (or every type is scored).

    A type outside the registry (stored by a deployment with open types, or by SQL) is never
    scored; one membership test per distinct type, not per event.
    """
    if signal_types is None:
        return None
    scored = {st: st in signal_types for st in set(st_col)}
    if all(scored.values()):
        return None
    return np.fromiter(map(scored.__getitem__, st_col), dtype=bool, count=len(st_col))


def _select(
    tx: LearnerTx,
    users: list[UUID],
    uidx: npt.NDArray[np.int32],
    tx_col: Sequence[int | None],
    result: BatchResult,
    typed: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.intp]:
    """The positions of the events to fold: known users, not in their rebuild snapshot, personalization allowed.

    ``typed`` (see :func:`_typed`) excludes the events of signal types that are not scored.

    Locks the users' profiles; users whose level forbids personalization lose their state.
    """
    out = result.outcomes
    n = len(uidx)
    empty = np.zeros(0, dtype=np.intp)
    levels = tx.lock_users(sorted(users, key=_INT))
    known_users = [u for u in users if u in levels]
    snapshots = tx.rebuild_snapshots(sorted(known_users, key=_INT))
    known = np.fromiter((u in levels for u in users), dtype=bool, count=len(users))
    keep = known[uidx]
    unknown = n - int(np.count_nonzero(keep))
    if unknown:
        out["unknown_user"] += unknown
    if typed is not None:
        out["unknown_signal"] += int(np.count_nonzero(keep & ~typed))
        keep &= typed
    if snapshots:
        snap_of = [snapshots.get(u) for u in users]
        for e in np.flatnonzero(keep).tolist():
            snap = snap_of[uidx[e]]
            txid = tx_col[e]
            if snap is not None and txid is not None and visible_in_snapshot(txid, snap):
                keep[e] = False
                out["rebuilt"] += 1
    if not keep.any():
        return empty

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
    return np.flatnonzero(keep & personal[uidx])


def _record_vectors(
    result: BatchResult,
    state_users: list[UUID],
    vectors: list[bytes | None],
    su: npt.NDArray[np.int64],
    t: npt.NDArray[np.int64],
    pick: list[int],
    commit_col: Sequence[int | None],
    events: _Events,
) -> None:
    """The Redis writes and deletes of the folded users, and the applied events for the freshness metrics."""
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


def _nan_if_none(value: int | None) -> float:
    return math.nan if value is None else float(value)


def _drop_state(tx: LearnerTx, user_ids: list[UUID]) -> None:
    tx.delete_embeddings(user_ids)
    tx.delete_scores(user_ids)


def record_outcomes(result: BatchResult) -> None:
    """Add a committed batch's outcome counts to the metrics."""
    for outcome, n in result.outcomes.items():
        metrics.MESSAGES.labels(outcome).inc(n)
    metrics.EVENTS_APPLIED.inc(result.outcomes.get("applied", 0))
    metrics.MALFORMED.inc(len(result.malformed))
