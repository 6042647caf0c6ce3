"""Point-in-time joins of entity rows with the feature-store snapshots, over ADBC.

Results arrive as Arrow tables decoded in C++ from binary COPY, which keeps hundreds of
thousands of feature rows out of per-row Python.  ADBC errors leave as the library's
(``StoreUnavailable``, ``StoreError``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from psycopg import sql

from personalization.errors import StoreError, StoreUnavailable
from personalization.store.queries import q

if TYPE_CHECKING:
    from personalization.store.nightly import PrivacyFilter

__all__ = ["PitSession", "pit_session"]

_SQL = "nightly.sql"


def _q(name: str) -> str:
    return q(name, _SQL)


def _c(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(_q(name)).format(**parts)


@contextmanager
def pit_session(database_url: str, work_mem: str) -> Iterator[PitSession]:
    """A session with the entities temp tables, for a chunked point-in-time export."""
    import adbc_driver_postgresql.dbapi as adbc  # type: ignore[import-untyped]

    with _wrap_adbc():
        conn = adbc.connect(database_url, autocommit=True)
    try:
        with _wrap_adbc():
            cur = conn.cursor()
            cur.execute(f"SET work_mem = '{work_mem}'")
            cur.execute(_q("create_entities"))
            cur.execute(_q("create_assigned"))
        yield PitSession(cur)
    finally:
        conn.close()


@contextmanager
def _wrap_adbc() -> Iterator[None]:
    import adbc_driver_manager

    try:
        yield
    except adbc_driver_manager.OperationalError as exc:
        raise StoreUnavailable(str(exc).splitlines()[0]) from exc
    except adbc_driver_manager.Error as exc:
        raise StoreError(str(exc).splitlines()[0]) from exc


class PitSession:
    """Joins chunks of entity rows with the snapshot valid at each row's timestamp."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def join(self, entities: pa.Table, privacy: PrivacyFilter) -> tuple[pa.Table, pa.Table]:
        """Join one chunk of ``row_no, user_id (text), ts`` rows.

        Returns ``row_no, as_of, computed_at`` for every entity row in ``row_no`` order, and
        ``row_no, content_type, signal_type, event_count, total_weight, last_seen_at,
        decayed_weight`` for every feature row of the assigned snapshots (unordered).  One
        REPEATABLE READ transaction per chunk (both results see the same catalogue), never
        one for the whole export: a transaction open that long would hold up the nightly swap.
        """
        assign = _c("assign_snapshots", levels=sql.SQL("{}::text[]").format(sql.Literal(list(privacy.levels))),
                    null_ok=sql.Literal(privacy.null_ok)).as_string(None)
        cur = self.cur
        with _wrap_adbc():
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                cur.execute("TRUNCATE pit_entities, pit_assigned")
                cur.adbc_ingest("pit_entities", entities, mode="append", temporary=True)
                cur.execute("ANALYZE pit_entities")
                cur.execute(assign)
                cur.execute("ANALYZE pit_assigned")
                cur.execute(_q("select_assigned"))
                assigned = cur.fetch_arrow_table()
                cur.execute(_q("select_features"))
                features = cur.fetch_arrow_table()
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
        return assigned, features


