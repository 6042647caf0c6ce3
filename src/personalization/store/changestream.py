"""PostgreSQL side of the change-stream relay's administration: slot, publication, stored offsets.

The relay (``personalization.changestream``) decides what to check and what to create and
words the errors; here are the statements, as named queries of ``store/sql/changestream.sql``
and, where a name comes from the settings (offsets table, publication, captured tables),
statements composed with quoted identifiers.  Everything runs on one autocommit
connection, because the slot functions cannot run inside a transaction block.  Driver
errors leave as the library's (``StoreUnavailable`` when PostgreSQL cannot be reached).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from personalization.errors import StoreError
from personalization.store.db import wrap_exceptions
from personalization.store.queries import q

__all__ = [
    "OFFSETS_DDL",
    "AdminConnection",
    "InsufficientPrivilege",
    "StatementTimedOut",
    "connect",
]

_SQL = "changestream.sql"

AdminConnection = psycopg.Connection[tuple[object, ...]]
"""An autocommit connection for the relay's administration."""

# Debezium's JDBC offset store creates its table with this DDL (the relay passes it in),
# and the relay seeds the same table before Debezium's first start.
OFFSETS_DDL = (
    "CREATE TABLE IF NOT EXISTS %s (id VARCHAR(36) NOT NULL, offset_key VARCHAR(1255), "
    "offset_val VARCHAR(1255), record_insert_ts TIMESTAMP NOT NULL, "
    "record_insert_seq INTEGER NOT NULL, PRIMARY KEY (id))"
)


class InsufficientPrivilege(StoreError):
    """The role may not run the statement."""


class StatementTimedOut(StoreError):
    """The statement ran into its statement timeout."""


def connect(database_url: str, connect_timeout_s: int = 10) -> AdminConnection:
    """An autocommit connection (close it, or use it as a context manager)."""
    with wrap_exceptions():
        return psycopg.connect(database_url, autocommit=True, connect_timeout=connect_timeout_s)


def _one(conn: AdminConnection, name: str, params: dict[str, object] | None = None) -> tuple[object, ...] | None:
    with wrap_exceptions():
        return conn.execute(q(name, _SQL), params or {}).fetchone()


def _all(conn: AdminConnection, name: str, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
    with wrap_exceptions():
        return conn.execute(q(name, _SQL), params or {}).fetchall()


def _run(conn: AdminConnection, stmt: sql.Composed, params: Sequence[object] = ()) -> None:
    with wrap_exceptions():
        conn.execute(stmt, params)


def slot_row(conn: AdminConnection, slot_name: str) -> tuple[object, ...] | None:
    """``(slot_name, plugin, database, active, restart_lsn, confirmed_flush_lsn, wal_status, retained_bytes)``."""
    return _one(conn, "read_slot", {"slot_name": slot_name})


def wal_level(conn: AdminConnection) -> str | None:
    """The server's ``wal_level``."""
    row = _one(conn, "wal_level")
    return None if row is None else str(row[0])


def replication_role(conn: AdminConnection) -> tuple[str, bool] | None:
    """``(current user, may stream changes)``."""
    row = _one(conn, "replication_role")
    return None if row is None else (str(row[0]), bool(row[1]))


def current_database(conn: AdminConnection) -> str:
    """The connected database's name."""
    row = _one(conn, "current_database")
    assert row is not None
    return str(row[0])


def current_wal_lsn(conn: AdminConnection) -> str:
    """The end of the WAL (``X/Y`` text)."""
    row = _one(conn, "current_wal_lsn")
    assert row is not None
    return str(row[0])


def table_exists(conn: AdminConnection, table: str) -> bool:
    """True when ``table`` resolves to a relation."""
    row = _one(conn, "regclass", {"name": table})
    return row is not None and row[0] is not None


def offset_values(conn: AdminConnection, table: str) -> list[str | None]:
    """The ``offset_val`` column of the JDBC offsets table."""
    with wrap_exceptions():
        rows = conn.execute(sql.SQL("SELECT offset_val FROM {}").format(sql.Identifier(table))).fetchall()
    return [None if v is None else str(v) for (v,) in rows]


def insert_offset(conn: AdminConnection, table: str, row_id: str, key: str, value: str) -> None:
    """Create the JDBC offsets table if missing and store one offset row."""
    ident = sql.Identifier(table)
    _run(conn, sql.SQL(OFFSETS_DDL.replace("%s", "{}")).format(ident))
    _run(conn, sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, now(), 0)").format(ident), (row_id, key, value))


def drop_table(conn: AdminConnection, table: str) -> None:
    """``DROP TABLE IF EXISTS``."""
    _run(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def publication_exists(conn: AdminConnection, name: str) -> bool:
    """True when the publication exists."""
    return _one(conn, "publication_exists", {"name": name}) is not None


def set_publication(conn: AdminConnection, name: str, tables: Sequence[str], *, create: bool) -> None:
    """Create the publication for ``tables`` (``schema.table``), or set its table list."""
    table_list = sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in tables)
    verb = "CREATE PUBLICATION {} FOR TABLE {}" if create else "ALTER PUBLICATION {} SET TABLE {}"
    try:
        conn.execute(sql.SQL(verb).format(sql.Identifier(name), table_list))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise InsufficientPrivilege(str(exc)) from exc
    except psycopg.Error:
        with wrap_exceptions():
            raise


def drop_publication(conn: AdminConnection, name: str) -> None:
    """``DROP PUBLICATION``."""
    _run(conn, sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))


def open_writers(conn: AdminConnection) -> list[tuple[object, ...]]:
    """``(pid, database, state, transaction age)`` of up to five sessions holding an xid."""
    return _all(conn, "open_writers")


def create_slot(conn: AdminConnection, slot_name: str, timeout_ms: int) -> None:
    """Create the logical slot (pgoutput), bounded by ``timeout_ms``; StatementTimedOut past it."""
    _one(conn, "set_statement_timeout", {"ms": str(timeout_ms)})
    try:
        conn.execute(q("create_slot", _SQL), {"slot_name": slot_name})
    except psycopg.errors.QueryCanceled as exc:
        raise StatementTimedOut(str(exc)) from exc
    except psycopg.Error:
        with wrap_exceptions():
            raise
    finally:
        _one(conn, "set_statement_timeout", {"ms": "0"})


def drop_slot(conn: AdminConnection, slot_name: str) -> None:
    """Drop the replication slot."""
    _one(conn, "drop_slot", {"slot_name": slot_name})
