"""PostgreSQL reads of ``personalization status`` (synchronous: status is a short CLI call).

One connection per status report, bounded by a connect timeout and a statement timeout, so
a slow or unreachable database makes the report say so instead of hanging it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from personalization.store.db import wrap_exceptions
from personalization.store.queries import q

_SQL = "platform.sql"


class PlatformStore:
    """The status queries over one open connection."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        """Use ``conn`` (see :func:`open_platform_store`)."""
        self._conn = conn

    def _one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with wrap_exceptions():
            return self._conn.execute(q(name, _SQL), params or {}).fetchone()

    def learner_positions(self, group_id: str, topic: str) -> dict[int, int]:
        """``{partition: next_offset}`` stored by the learner group."""
        with wrap_exceptions():
            rows = self._conn.execute(q("learner_positions", _SQL), {"group_id": group_id, "topic": topic}).fetchall()
        return {int(r["partition"]): int(r["next_offset"]) for r in rows}

    def nightly(self) -> dict[str, Any]:
        """The latest nightly run and the age of the last successful one."""
        latest = self._one("nightly_latest_run")
        success = self._one("nightly_latest_success") or {}
        age = success.get("age_s")
        return {
            "last_run_status": None if latest is None else latest["status"],
            "last_run_started_at": None if latest is None else latest["started_at"].isoformat(),
            "last_success_at": None if success.get("finished_at") is None else success["finished_at"].isoformat(),
            "last_success_age_s": None if age is None else round(float(age), 1),
        }

    def pending_rows(self, relation: str, query: str | None = None) -> int | None:
        """The backlog of ``relation``: the named ``query``'s count, or all its rows without one.

        None while ``relation`` does not exist (its migration not applied on this database).
        """
        present = self._one("relation_exists", {"relation": relation})
        if not present or not present["present"]:
            return None
        if query is not None:
            row = self._one(query)
        else:
            stmt = sql.SQL(q("count_relation", _SQL)).format(relation=sql.Identifier(*relation.split(".")))
            with wrap_exceptions():
                row = self._conn.execute(stmt).fetchone()
        return None if row is None else int(next(iter(row.values())))


@contextlib.contextmanager
def open_platform_store(database_url: str, timeout_s: float = 3.0) -> Iterator[PlatformStore]:
    """A read-only autocommit connection with short timeouts; StoreUnavailable if unreachable."""
    with wrap_exceptions(), psycopg.connect(
        database_url, autocommit=True, row_factory=dict_row, connect_timeout=max(1, int(timeout_s)),
        options=f"-c statement_timeout={int(timeout_s * 1000)}", application_name="personalization-status",
    ) as conn:
        yield PlatformStore(conn)
