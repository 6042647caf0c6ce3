"""One poll batch: parse, deduplicate, fold into user state, store offsets (one transaction).

``apply_batch`` runs inside a :class:`~personalization.store.learner.LearnerTx`; the caller
commits, then writes Redis from the returned :class:`BatchResult`.  Exactly-once effects
come from three checks made under the partition's offset-row lock:

1. offset: a message below the stored ``next_offset`` was applied by an earlier batch
   (possibly of another member before a rebalance) and is skipped;
2. source position: a message at or below the partition's high-water position is a
   re-send of the at-least-once relay and is skipped (see ``learner.envelope``);
3. recomputation snapshot: a record whose transaction is visible in the user's last
   ``learner recompute`` snapshot is already counted and is skipped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from personalization.core.decay import DecayConfig
from personalization.core.privacy import policy_for
from personalization.learner import metrics
from personalization.learner.envelope import (
    EventRecord,
    Ignored,
    MalformedMessage,
    Position,
    ProfileChange,
    UserErased,
    parse_event_message,
    parse_profile_message,
)
from personalization.learner.model import (
    ContentVector,
    EmbeddingState,
    ScoreCell,
    add_to_embedding,
    add_to_score,
    content_unit_vector,
)
from personalization.learner.snapshots import visible_in_snapshot
from personalization.store.learner import EmbeddingRow, LearnerTx, OffsetRow, ScoreRow

log = logging.getLogger(__name__)

__all__ = ["BatchResult", "ContentCache", "Incoming", "Malformed", "apply_batch", "rebuild_user"]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One Kafka message as the batch sees it."""

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


@dataclass
class BatchResult:
    """What a committed batch asks of Redis and the metrics."""

    redis_writes: dict[UUID, bytes] = field(default_factory=dict)
    redis_deletes: set[UUID] = field(default_factory=set)
    malformed: list[Malformed] = field(default_factory=list)
    # (user, occurred_at, commit_ts_ms, kafka_ts_ms) of every applied event whose key is written.
    applied: list[tuple[UUID, datetime, int | None, int | None]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


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

    events: list[EventRecord] = []
    profile_changes: list[ProfileChange] = []
    for topic in sorted(by_topic):
        partitions = by_topic[topic]
        stored = tx.lock_offsets(group_id, topic, sorted(partitions))
        new_rows: list[OffsetRow] = []
        for partition, msgs in sorted(partitions.items()):
            row = stored[partition]
            hw: Position | None = row.high_water
            last = row.next_offset - 1
            for m in sorted(msgs, key=lambda x: x.offset):
                if m.offset <= last:
                    out["stale"] += 1
                    continue
                last = m.offset
                try:
                    parsed = _parse(m, events_topic)
                except MalformedMessage as exc:
                    log.warning("malformed message at %s[%d]@%d: %s", m.topic, m.partition, m.offset, exc)
                    result.malformed.append(Malformed(m, str(exc)))
                    out["malformed"] += 1
                    continue
                if isinstance(parsed, EventRecord):
                    if hw is not None and parsed.position <= hw:
                        out["duplicate"] += 1
                        continue
                    hw = parsed.position
                    parsed.kafka_ts_ms = m.timestamp_ms
                    events.append(parsed)
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
            if last >= row.next_offset:
                new_rows.append(OffsetRow(partition, last + 1, hw))
        tx.save_offsets(group_id, topic, new_rows)

    if profile_changes:
        _apply_profile_changes(tx, profile_changes, result, decay, content.dim)
    if events:
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


def _apply_events(
    tx: LearnerTx, events: list[EventRecord], result: BatchResult, decay: DecayConfig, content: ContentCache
) -> None:
    out = result.outcomes
    users = sorted({e.user_id for e in events})
    levels = tx.lock_users(users)
    snapshots = tx.rebuild_snapshots([u for u in users if u in levels])
    per_user: dict[UUID, list[EventRecord]] = defaultdict(list)
    for e in events:
        if e.user_id not in levels:
            out["unknown_user"] += 1
            continue
        snap = snapshots.get(e.user_id)
        if snap is not None and e.tx_id is not None and visible_in_snapshot(e.tx_id, snap):
            out["rebuilt"] += 1
            continue
        per_user[e.user_id].append(e)
    if not per_user:
        return

    # Learner state (scores and embedding) only for levels that permit personalization.
    score_users = [u for u in per_user if policy_for(levels[u]).personalize]
    emb_users = score_users
    no_state_users = [u for u in per_user if not policy_for(levels[u]).personalize]
    if no_state_users:
        out["privacy"] += sum(len(per_user[u]) for u in no_state_users)
        # The level may have changed before its profile message reached us.
        _drop_state(tx, no_state_users)
        result.redis_deletes.update(no_state_users)

    grouped: dict[tuple[UUID, str, str], list[tuple[float, datetime]]] = defaultdict(list)
    for u in score_users:
        for e in per_user[u]:
            grouped[(u, e.content_type, e.signal_type)].append((e.signal_weight, e.occurred_at))
    # Stored cells as plain tuples keyed like ``grouped``; only touched ones become objects.
    cells = tx.load_score_tuples(score_users)
    score_rows: list[ScoreRow] = []
    for key, evs in grouped.items():
        old = cells.get(key)
        cell = add_to_score(None if old is None else ScoreCell(*old), decay, key[2], evs)
        score_rows.append(ScoreRow(key[0], key[1], key[2], cell.score, cell.ref_time, cell.event_count))
    tx.upsert_scores(score_rows)

    if emb_users:
        vectors = content.get_many(tx, {e.content_id for u in emb_users for e in per_user[u]})
        stored = tx.load_embeddings(emb_users)
        emb_rows: list[EmbeddingRow] = []
        for u in emb_users:
            prev = stored.get(u)
            state = None
            if prev is not None and prev.dim == content.dim:
                raw = EmbeddingState.raw_from_bytes(prev.raw_sum, prev.dim)
                state = EmbeddingState(prev.dim, prev.model, raw, prev.ref_time, prev.event_count, prev.embedded_count)
            new = add_to_embedding(
                state,
                decay,
                content.dim,
                ((e.signal_type, e.signal_weight, e.occurred_at, vectors.get(e.content_id)) for e in per_user[u]),
            )
            vector = new.normalized()
            emb_rows.append(
                EmbeddingRow(
                    u, new.model, new.dim, new.raw_bytes(), new.ref_time, new.event_count, new.embedded_count, vector
                )
            )
            if vector is None:
                result.redis_deletes.add(u)
            else:
                result.redis_writes[u] = vector
                for e in per_user[u]:
                    result.applied.append((u, e.occurred_at, e.commit_ts_ms, e.kafka_ts_ms))
        tx.upsert_embeddings(emb_rows)
    out["applied"] += sum(len(per_user[u]) for u in score_users)


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
