"""PostgreSQL side of the online learner (synchronous psycopg: the consumer loop is one thread).

Every method of :class:`LearnerTx` runs inside the transaction opened by
:meth:`LearnerStore.transaction`; driver errors leave as the library's own errors
(``StoreUnavailable`` when PostgreSQL is unreachable), so the learner never imports psycopg.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import dict_row, tuple_row

from personalization.errors import StoreError
from personalization.store.db import wrap_exceptions
from personalization.store.learner_rows import (
    EmbeddingBatch,
    EmbeddingRow,
    OffsetRow,
    ScoreBatch,
    ScoreRow,
    StoredEmbeddings,
)
from personalization.store.pgbinary import PG_EPOCH_US, encode_rows
from personalization.store.queries import q

__all__ = [
    "EmbeddingBatch",
    "EmbeddingRow",
    "LearnerStore",
    "LearnerTx",
    "OffsetRow",
    "ScoreBatch",
    "ScoreRow",
    "StoredEmbeddings",
]

_SQL = "learner.sql"


def _q(name: str) -> str:
    return q(name, _SQL)


def _ints(packed: bytes | None, dtype: str) -> npt.NDArray[np.int64]:
    return np.frombuffer(packed or b"", dtype=dtype).astype(np.int64)


def _floats(packed: bytes | None) -> npt.NDArray[np.float64]:
    return np.frombuffer(packed or b"", dtype=">f8").astype(np.float64)


def _times(packed: bytes | None) -> npt.NDArray[np.int64]:
    """timestamptz_send values as microseconds since the Unix epoch."""
    return np.frombuffer(packed or b"", dtype=">i8").astype(np.int64) + PG_EPOCH_US


class LearnerTx:
    """The statements of one learner transaction."""

    def __init__(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        self._cur = cur

    def _all(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self._cur.execute(_q(name), params)
        return self._cur.fetchall()

    def _tuples(self, name: str, params: dict[str, Any], *, binary: bool = False) -> list[tuple[Any, ...]]:
        """Rows as plain tuples (the hot paths: no dict per row)."""
        with self._cur.connection.cursor(row_factory=tuple_row, binary=binary) as cur:
            cur.execute(_q(name), params)
            return cur.fetchall()

    def _run(self, name: str, params: dict[str, Any]) -> int:
        self._cur.execute(_q(name), params)
        return max(self._cur.rowcount, 0)

    def schema_present(self) -> bool:
        """Whether migration 0300_learner has been applied."""
        self._cur.execute("SELECT to_regclass('learner_offsets') IS NOT NULL AS present")
        row = self._cur.fetchone()
        return bool(row and row["present"])

    def stored_offsets(self, group_id: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Stored next offsets of ``partitions`` (absent for partitions never committed)."""
        rows = self._all("stored_offsets", {"group_id": group_id, "topic": topic, "partitions": list(partitions)})
        return {int(r["partition"]): int(r["next_offset"]) for r in rows}

    def lock_offsets(self, group_id: str, topic: str, partitions: Sequence[int]) -> dict[int, OffsetRow]:
        """Lock (creating if needed) the offset rows of ``partitions``."""
        params = {"group_id": group_id, "topic": topic, "partitions": list(partitions)}
        self._run("ensure_offsets", params)
        out: dict[int, OffsetRow] = {}
        for r in self._all("lock_offsets", params):
            hw = None
            if r["hw_lsn"] is not None:
                hw = (int(r["hw_commit_lsn"]), int(r["hw_lsn"]), int(r["hw_event_id"]))
            out[int(r["partition"])] = OffsetRow(int(r["partition"]), int(r["next_offset"]), hw)
        return out

    def save_offsets(self, group_id: str, topic: str, rows: Sequence[OffsetRow]) -> None:
        """Store the new positions (rows must have been locked in this transaction)."""
        if not rows:
            return
        self._run(
            "save_offsets",
            {
                "group_id": group_id,
                "topic": topic,
                "partitions": [r.partition for r in rows],
                "next_offsets": [r.next_offset for r in rows],
                "hw_commit_lsns": [None if r.high_water is None else r.high_water[0] for r in rows],
                "hw_lsns": [None if r.high_water is None else r.high_water[1] for r in rows],
                "hw_event_ids": [None if r.high_water is None else r.high_water[2] for r in rows],
            },
        )

    def lock_users(self, user_ids: Sequence[UUID]) -> dict[UUID, str | None]:
        """Privacy level of each user that still exists, locked against deletion until commit."""
        if not user_ids:
            return {}
        return dict(self._tuples("lock_users", {"user_ids": list(user_ids)}))

    def rebuild_snapshots(self, user_ids: Sequence[UUID]) -> dict[UUID, str]:
        """The snapshot of the last recomputation of each user that has one."""
        if not user_ids:
            return {}
        return {r["user_id"]: r["snapshot"] for r in self._all("rebuild_snapshots", {"user_ids": list(user_ids)})}

    def content_vectors(self, content_ids: Sequence[str]) -> dict[str, tuple[str, int, bytes]]:
        """(model, dim, float32 bytes) of each content id that has an embedding."""
        if not content_ids:
            return {}
        rows = self._all("content_vectors", {"content_ids": list(content_ids)})
        return {r["content_id"]: (r["model"], int(r["dim"]), bytes(r["embedding"])) for r in rows}

    def load_embeddings(self, user_ids: Sequence[UUID]) -> dict[UUID, EmbeddingRow]:
        """The embedding rows of ``user_ids`` (without the normalised bytes)."""
        if not user_ids:
            return {}
        return {
            r["user_id"]: EmbeddingRow(
                r["user_id"],
                r["model"],
                int(r["dim"]),
                bytes(r["raw_sum"]),
                r["ref_time"],
                int(r["event_count"]),
                int(r["embedded_count"]),
                None,
            )
            for r in self._all("load_embeddings", {"user_ids": list(user_ids)})
        }

    def _copy_in(self, name: str, data: bytes) -> None:
        with self._cur.copy(_q(name)) as copy:
            copy.write(data)

    def _packed_row(self, name: str, params: dict[str, Any]) -> tuple[Any, ...]:
        """The one row of a packed-columns query (binary: bytea arrives as bytes)."""
        rows = self._tuples(name, params, binary=True)
        if not rows:
            raise StoreError(f"{name} returned no row")
        return rows[0]

    def batch_cell_scores(
        self,
        users: npt.NDArray[np.void],
        content_type: npt.NDArray[np.int32],
        signal_type: npt.NDArray[np.int32],
        content_types: list[str],
        signal_types: list[str],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The stored ones among the batch's cells: (cell position, score, ref_us, event_count)."""
        n = len(users)
        if not n:
            return _ints(None, ">i4"), _floats(None), _times(None), _ints(None, ">i8")
        self._copy_in(
            "copy_batch_cells",
            encode_rows(
                [
                    ("int4", np.arange(n, dtype=np.int32)),
                    ("uuid", users),
                    ("int4", content_type),
                    ("int4", signal_type),
                ]
            ),
        )
        cells, scores, refs, counts = self._packed_row(
            "batch_cell_scores", {"content_types": content_types, "signal_types": signal_types}
        )
        return _ints(cells, ">i4"), _floats(scores), _times(refs), _ints(counts, ">i8")

    def write_score_batch(self, batch: ScoreBatch) -> None:
        """Store a batch's cells: an update of those that existed, an insert of the new ones."""
        if not len(batch.users):
            return
        self._copy_in(
            "copy_batch_scores",
            encode_rows(
                [
                    ("uuid", batch.users),
                    ("int4", batch.content_type),
                    ("int4", batch.signal_type),
                    ("float8", batch.score),
                    ("timestamptz", batch.ref_us),
                    ("int8", batch.event_count),
                    ("bool", batch.existed),
                ]
            ),
        )
        names = {"content_types": batch.content_types, "signal_types": batch.signal_types}
        existed = int(np.count_nonzero(batch.existed))
        updated = self._run("update_batch_scores", names) if existed else 0
        inserted = self._run("insert_batch_scores", names) if existed < len(batch.users) else 0
        if updated != existed or inserted != len(batch.users) - existed:
            raise StoreError(
                f"score cells changed under the batch ({updated}/{existed} updated, "
                f"{inserted}/{len(batch.users) - existed} inserted); the batch is retried"
            )

    def load_embedding_batch(self, user_ids: Sequence[UUID], dim: int) -> StoredEmbeddings:
        """The stored embedding rows of ``user_ids`` (the raw sums of rows of ``dim`` values as a matrix)."""
        if not user_ids:
            return StoredEmbeddings.empty(dim)
        users, models, dims, raws, refs, counts, embedded = self._packed_row(
            "load_embedding_blobs", {"user_ids": list(user_ids)}
        )
        if users is None:
            return StoredEmbeddings.empty(dim)
        row_dims = _ints(dims, ">i4")
        same = row_dims == dim
        ends = np.cumsum(row_dims * 8)
        if int(ends[-1]) != len(raws):
            raise StoreError("stored raw sums do not match their dimensions")
        if same.all():
            raw = np.frombuffer(raws, dtype="<f8").reshape(len(row_dims), dim).astype(np.float64)
        else:
            raw = np.zeros((len(row_dims), dim), dtype=np.float64)
            for i in np.flatnonzero(same).tolist():
                raw[i] = np.frombuffer(raws[ends[i] - 8 * dim : ends[i]], dtype="<f8")
        return StoredEmbeddings(
            users=np.frombuffer(users, dtype="V16").copy(),
            models=list(models),
            same_dim=same,
            raw=raw,
            ref_us=_times(refs),
            event_count=_ints(counts, ">i8"),
            embedded_count=_ints(embedded, ">i8"),
        )

    def write_embedding_batch(self, batch: EmbeddingBatch) -> None:
        """Store a batch's embedding rows: an update of those that existed, an insert of the new ones."""
        n = len(batch.users)
        if not n:
            return
        raw = np.ascontiguousarray(batch.raw, dtype="<f8").view(np.uint8).reshape(n, 8 * batch.dim)
        vec = np.ascontiguousarray(batch.embedding, dtype="<f4").view(np.uint8).reshape(n, 4 * batch.dim)
        self._copy_in(
            "copy_batch_embeddings",
            encode_rows(
                [
                    ("uuid", batch.users),
                    ("int4", batch.model),
                    ("int4", np.full(n, batch.dim, dtype=np.int32)),
                    ("bytea", raw),
                    ("timestamptz", batch.ref_us),
                    ("int8", batch.event_count),
                    ("int8", batch.embedded_count),
                    ("bool", batch.has_embedding),
                    ("bytea", vec),
                    ("bool", batch.existed),
                ]
            ),
        )
        models = {"models": batch.models}
        existed = int(np.count_nonzero(batch.existed))
        updated = self._run("update_batch_embeddings", models) if existed else 0
        inserted = self._run("insert_batch_embeddings", models) if existed < n else 0
        if updated != existed or inserted != n - existed:
            raise StoreError(
                f"embedding rows changed under the batch ({updated}/{existed} updated, "
                f"{inserted}/{n - existed} inserted); the batch is retried"
            )

    def upsert_scores(self, rows: Sequence[ScoreRow]) -> None:
        """Insert or replace score cells."""
        if not rows:
            return
        self._run(
            "upsert_scores",
            {
                "user_ids": [r.user_id for r in rows],
                "content_types": [r.content_type for r in rows],
                "signal_types": [r.signal_type for r in rows],
                "scores": [r.score for r in rows],
                "ref_times": [r.ref_time for r in rows],
                "counts": [r.event_count for r in rows],
            },
        )

    def upsert_embeddings(self, rows: Sequence[EmbeddingRow]) -> None:
        """Insert or replace embedding rows."""
        if not rows:
            return
        self._run(
            "upsert_embeddings",
            {
                "user_ids": [r.user_id for r in rows],
                "models": [r.model for r in rows],
                "dims": [r.dim for r in rows],
                "raw_sums": [r.raw_sum for r in rows],
                "ref_times": [r.ref_time for r in rows],
                "counts": [r.event_count for r in rows],
                "embedded_counts": [r.embedded_count for r in rows],
                "embeddings": [r.embedding for r in rows],
            },
        )

    def delete_embeddings(self, user_ids: Sequence[UUID]) -> int:
        """Drop the embedding rows of ``user_ids``."""
        return self._run("delete_embeddings", {"user_ids": list(user_ids)}) if user_ids else 0

    def delete_scores(self, user_ids: Sequence[UUID]) -> int:
        """Drop the score cells of ``user_ids``."""
        return self._run("delete_scores", {"user_ids": list(user_ids)}) if user_ids else 0

    def delete_rebuilds(self, user_ids: Sequence[UUID]) -> int:
        """Forget the recomputation snapshots of ``user_ids``."""
        return self._run("delete_rebuilds", {"user_ids": list(user_ids)}) if user_ids else 0

    def lock_user_for_rebuild(self, user_id: UUID) -> tuple[bool, str | None]:
        """(exists, privacy_level) with the profile row locked FOR UPDATE."""
        rows = self._all("lock_user_for_rebuild", {"user_id": user_id})
        return (True, rows[0]["privacy_level"]) if rows else (False, None)

    def user_events_with_snapshot(self, user_id: UUID) -> tuple[str, list[dict[str, Any]]]:
        """The snapshot and the user's events visible in it (one statement)."""
        rows = self._all("user_events_with_snapshot", {"user_id": user_id})
        snapshot = str(rows[0]["snapshot"])
        return snapshot, [r for r in rows if r["content_id"] is not None]

    def save_rebuild(self, user_id: UUID, snapshot: str) -> None:
        """Record the snapshot a recomputation of ``user_id`` read."""
        self._run("save_rebuild", {"user_id": user_id, "snapshot": snapshot})

    def existing_users(self, user_ids: Sequence[UUID]) -> set[UUID]:
        """Those of ``user_ids`` that still have a profile."""
        if not user_ids:
            return set()
        return {r[0] for r in self._tuples("existing_users", {"user_ids": list(user_ids)})}

    def recent_embeddings(self, seconds: float) -> list[tuple[UUID, bytes]]:
        """(user_id, normalised bytes) of embeddings changed in the last ``seconds``."""
        return [(r["user_id"], bytes(r["embedding"])) for r in self._all("recent_embeddings", {"seconds": seconds})]

    def all_user_ids(self) -> list[UUID]:
        """Every user with a profile."""
        return [r["user_id"] for r in self._all("all_user_ids", {})]

    def read_scores(self, user_id: UUID) -> list[ScoreRow]:
        """The score cells of one user."""
        return [
            ScoreRow(
                user_id, r["content_type"], r["signal_type"], float(r["score"]), r["ref_time"], int(r["event_count"])
            )
            for r in self._all("read_scores", {"user_id": user_id})
        ]

    def read_embedding(self, user_id: UUID) -> EmbeddingRow | None:
        """The embedding row of one user, normalised bytes included."""
        rows = self._all("read_embedding", {"user_id": user_id})
        if not rows:
            return None
        r = rows[0]
        return EmbeddingRow(
            user_id,
            r["model"],
            int(r["dim"]),
            bytes(r["raw_sum"]),
            r["ref_time"],
            int(r["event_count"]),
            int(r["embedded_count"]),
            None if r["embedding"] is None else bytes(r["embedding"]),
        )


class LearnerStore:
    """One connection, reopened after a failure (the learner is single-threaded)."""

    def __init__(self, database_url: str, *, connect_timeout_s: float = 5.0, statement_timeout_ms: int = 60_000):
        """Remember how to connect; the connection is opened on first use."""
        self._url = database_url
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = psycopg.connect(
                self._url,
                row_factory=dict_row,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout_s)),
                options=f"-c statement_timeout={self._statement_timeout_ms}",
                # The pid tells members apart in pg_stat_activity (and lets tests kill one mid-batch).
                application_name=f"personalization-learner {os.getpid()}",
            )
            # The batch path's session-local tables (emptied at every commit), with room for a
            # batch's rows in memory and for its hash joins (the defaults spill to disk).
            self._conn.execute("SET temp_buffers = '128MB'")
            self._conn.execute("SET work_mem = '64MB'")
            self._conn.execute(_q("batch_tables"))
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LearnerTx]:
        """One transaction: committed when the block exits normally, rolled back otherwise."""
        with wrap_exceptions():
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    yield LearnerTx(cur)
            except psycopg.OperationalError:
                # A dead connection is replaced on the next call.
                self.close()
                raise

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
