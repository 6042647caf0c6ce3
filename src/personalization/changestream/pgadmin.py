"""PostgreSQL side of the relay: pre-flight checks, slot, publication and stored offsets.

Everything here runs with psycopg before the JVM starts, so that a misconfigured database
fails fast with one message that names the fix instead of a Debezium stack trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql

from personalization.changestream.capture import captured_tables
from personalization.config import Settings

__all__ = [
    "OFFSETS_DDL",
    "RECOVERY_HELP",
    "CdcSetupError",
    "SlotInUse",
    "SlotInfo",
    "clear_offsets",
    "drop_slot_and_publication",
    "ensure_publication_and_slot",
    "initial_offset",
    "preflight",
    "read_slot",
    "seed_jdbc_offsets",
    "slot_lsn",
    "stored_lsn",
]

RECOVERY_HELP = (
    "Recovery: `personalization cdc reset-offsets --yes` forgets the stored position and "
    "re-creates the slot at the current end of the WAL, then `personalization cdc run` "
    "resumes from there (rows committed while the slot was missing are not re-sent); start "
    "with `personalization cdc run --snapshot-mode initial` instead to re-send every current "
    'row of the captured tables as read events (op "r", duplicates for consumers to '
    "tolerate)."
)

log = logging.getLogger(__name__)

_LSN_IN_OFFSET = re.compile(rb'"lsn"\s*:\s*(\d+)')


class CdcSetupError(RuntimeError):
    """The database cannot serve the relay; the message says what to do."""


class SlotInUse(CdcSetupError):
    """The replication slot is held by a running relay, so it is not dropped."""


@dataclass(frozen=True)
class SlotInfo:
    """The relay's replication slot as PostgreSQL reports it."""

    name: str
    plugin: str
    database: str
    active: bool
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    wal_status: str | None
    retained_wal_bytes: int | None


def connect(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection (slot functions cannot run inside a transaction block)."""
    return psycopg.connect(settings.database.url, autocommit=True, connect_timeout=10)


def read_slot(conn: psycopg.Connection[tuple[object, ...]], slot_name: str) -> SlotInfo | None:
    """The slot row, with the WAL it keeps from being recycled, or None if absent."""
    row = conn.execute(
        """
        SELECT slot_name, plugin, database, active, restart_lsn::text,
               confirmed_flush_lsn::text, wal_status,
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
        FROM pg_replication_slots WHERE slot_name = %s
        """,
        (slot_name,),
    ).fetchone()
    if row is None:
        return None
    return SlotInfo(
        name=str(row[0]),
        plugin=str(row[1]),
        database=str(row[2]),
        active=bool(row[3]),
        restart_lsn=None if row[4] is None else str(row[4]),
        confirmed_flush_lsn=None if row[5] is None else str(row[5]),
        wal_status=None if row[6] is None else str(row[6]),
        retained_wal_bytes=None if row[7] is None else int(str(row[7])),
    )


def stored_lsn(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> int | None:
    """The LSN in the relay's stored offsets, or None when nothing is stored yet.

    Both stores keep Debezium's offset JSON (``{"lsn": ..., "txId": ...}``) as plain bytes:
    the JDBC store in a text column, the file store inside a Java-serialized map, so one
    pattern reads either without a JVM.
    """
    if settings.cdc.offsets_file:
        try:
            with open(settings.cdc.offsets_file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        values = [int(m) for m in _LSN_IN_OFFSET.findall(data)]
        return max(values) if values else None
    exists = conn.execute("SELECT to_regclass(%s)", (settings.cdc.offsets_table,)).fetchone()
    if exists is None or exists[0] is None:
        return None
    table = sql.Identifier(settings.cdc.offsets_table)
    rows = conn.execute(sql.SQL("SELECT offset_val FROM {}").format(table)).fetchall()
    lsns: list[int] = []
    for (value,) in rows:
        if value is None:
            continue
        lsn = json.loads(str(value)).get("lsn")
        if lsn is not None:
            lsns.append(int(lsn))
    return max(lsns) if lsns else None


OFFSETS_DDL = (
    "CREATE TABLE IF NOT EXISTS %s (id VARCHAR(36) NOT NULL, offset_key VARCHAR(1255), "
    "offset_val VARCHAR(1255), record_insert_ts TIMESTAMP NOT NULL, "
    "record_insert_seq INTEGER NOT NULL, PRIMARY KEY (id))"
)


def initial_offset(settings: Settings, lsn: int) -> tuple[str, str]:
    """Debezium's offset (key, value) JSON for "resume streaming at ``lsn``".

    Without a stored offset Debezium starts at the server's *current* WAL position, which
    would skip rows committed after the slot was created but before Debezium connected
    (or before its first offset commit, if the relay is killed during its first start).
    Seeding the slot's position closes that gap.  Only ``lsn`` is given: with no
    ``lsn_commit``/``lsn_proc`` Debezium does not skip anything it then receives.
    """
    key = json.dumps([settings.cdc.engine_name, {"server": settings.kafka.topic_prefix}], separators=(",", ":"))
    value = json.dumps({"lsn": lsn, "txId": None, "ts_usec": int(time.time() * 1_000_000)}, separators=(",", ":"))
    return key, value


def slot_lsn(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> int:
    """The slot's confirmed position as an integer LSN."""
    slot = read_slot(conn, settings.cdc.slot_name)
    if slot is None or slot.confirmed_flush_lsn is None:
        raise CdcSetupError(f"replication slot {settings.cdc.slot_name!r} has no confirmed position")
    return _lsn_to_int(slot.confirmed_flush_lsn)


def seed_jdbc_offsets(conn: psycopg.Connection[tuple[object, ...]], settings: Settings, lsn: int) -> None:
    """Store the initial offset in the JDBC offset table (created here if missing)."""
    table = sql.Identifier(settings.cdc.offsets_table)
    conn.execute(sql.SQL(OFFSETS_DDL.replace("%s", "{}")).format(table))
    key, value = initial_offset(settings, lsn)
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, now(), 0)").format(table),
        (str(uuid.uuid4()), key, value),
    )


def clear_offsets(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> None:
    """Forget the stored position (file removed, or the offsets table dropped)."""
    if settings.cdc.offsets_file:
        with contextlib.suppress(FileNotFoundError):
            os.remove(settings.cdc.offsets_file)
        return
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(settings.cdc.offsets_table)))


def _lsn_to_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def preflight(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> None:
    """Refuse to start on a database that would make Debezium fail or silently skip rows.

    Checks ``wal_level``, the replication privilege, the slot's plugin/database/state and
    whether stored offsets still belong to this database and slot.
    """
    wal_level = conn.execute("SHOW wal_level").fetchone()
    if wal_level is None or wal_level[0] != "logical":
        level = None if wal_level is None else wal_level[0]
        raise CdcSetupError(
            f"PostgreSQL has wal_level={level}, but change data capture needs logical "
            "decoding. Fix: run `ALTER SYSTEM SET wal_level = logical;` as a superuser and "
            "restart PostgreSQL (also check max_replication_slots >= 1 and "
            "max_wal_senders >= 1)."
        )
    role = conn.execute(
        "SELECT current_user, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if role is None or not role[1]:
        user = None if role is None else role[0]
        raise CdcSetupError(
            f"Role {user!r} may not stream changes. Fix: `ALTER ROLE {user} WITH REPLICATION;` "
            "(and make it owner of the captured tables, or create the publication "
            f"{settings.cdc.publication_name!r} as their owner)."
        )
    slot = read_slot(conn, settings.cdc.slot_name)
    current_db = conn.execute("SELECT current_database()").fetchone()
    assert current_db is not None
    if slot is not None:
        if slot.plugin != "pgoutput" or slot.database != current_db[0]:
            raise CdcSetupError(
                f"Replication slot {slot.name!r} belongs to database {slot.database!r} with "
                f"plugin {slot.plugin!r}; the relay needs one for {current_db[0]!r} with "
                "pgoutput. Set PERSONALIZATION_CDC_SLOT_NAME to another name, or retire the "
                "old slot with `personalization cdc drop-slot --yes`."
            )
        if slot.wal_status == "lost":
            raise CdcSetupError(
                f"Replication slot {slot.name!r} was invalidated (its WAL was removed, see "
                "max_slot_wal_keep_size); changes since its position are gone from the WAL. " + RECOVERY_HELP
            )
    lsn = stored_lsn(conn, settings)
    if lsn is not None and slot is None:
        raise CdcSetupError(
            f"Stored offsets point at LSN {lsn} but replication slot "
            f"{settings.cdc.slot_name!r} does not exist (database restored or recreated, or "
            "the slot was dropped). Starting anyway would silently skip every change made "
            "since. " + RECOVERY_HELP
        )
    if lsn is not None:
        current = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert current is not None
        if lsn > _lsn_to_int(str(current[0])):
            raise CdcSetupError(
                f"Stored offsets point at LSN {lsn}, beyond the end of this database's WAL "
                f"({current[0]}): they belong to another (older or recreated) database. " + RECOVERY_HELP
            )


def ensure_publication_and_slot(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> bool:
    """Create the project's publication and slot if missing; True when the slot is new.

    The slot is created here rather than by Debezium so that the stream's start is the
    moment this command ran, and so that the slot is never silently re-created by the
    connector after it was lost (``preflight`` refuses that case).
    """
    tables = sql.SQL(", ").join(sql.Identifier(*name.split(".")) for name in captured_tables(settings))
    publication = sql.Identifier(settings.cdc.publication_name)
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (settings.cdc.publication_name,)
    ).fetchone()
    try:
        if exists is None:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(publication, tables))
        else:
            # Keeps the table list in step with cdc_capture_profile.
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(publication, tables))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise CdcSetupError(
            f"Cannot create or alter publication {settings.cdc.publication_name!r}: {exc}. "
            "Fix: run the relay as the owner of the captured tables, or have the owner run "
            f"`CREATE PUBLICATION {settings.cdc.publication_name} FOR TABLE "
            f"{', '.join(captured_tables(settings))};`."
        ) from exc
    if read_slot(conn, settings.cdc.slot_name) is not None:
        return False
    _create_slot(conn, settings)
    return True


_OPEN_WRITERS = """
    SELECT pid, datname, state, (now() - xact_start)::text
    FROM pg_stat_activity
    WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
    ORDER BY xact_start
    LIMIT 5
"""


def _create_slot(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> None:
    """Create the logical slot, bounded in time.

    PostgreSQL only finishes creating a logical slot once every transaction that holds an
    xid anywhere in the cluster has ended; one session left "idle in transaction" makes it
    wait forever.  The wait is announced, bounded by ``cdc_slot_create_timeout_s``, and a
    timeout names the sessions to end.
    """
    writers = conn.execute(_OPEN_WRITERS).fetchall()
    if writers:
        log.info("creating slot %s waits for these transactions to end: %s", settings.cdc.slot_name, writers)
    timeout_ms = int(settings.cdc.slot_create_timeout_s * 1000)
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(timeout_ms),))
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (settings.cdc.slot_name,))
    except psycopg.errors.QueryCanceled as exc:
        writers = conn.execute(_OPEN_WRITERS).fetchall()
        described = "; ".join(
            f"pid {pid} in {db} ({state}, transaction open for {age})" for pid, db, state, age in writers
        )
        raise CdcSetupError(
            f"Creating replication slot {settings.cdc.slot_name!r} waited "
            f"{settings.cdc.slot_create_timeout_s:.0f} s for running transactions to end: "
            f"{described or 'none left'}. Fix: end them (COMMIT/ROLLBACK, or "
            "`SELECT pg_terminate_backend(<pid>)`) and start the relay again."
        ) from exc
    finally:
        conn.execute("SELECT set_config('statement_timeout', '0', false)")


def drop_slot_and_publication(
    conn: psycopg.Connection[tuple[object, ...]], settings: Settings, *, keep_offsets: bool
) -> list[str]:
    """Retire the relay: drop its slot, publication and (unless kept) stored offsets.

    Returns what was dropped.  Refuses while the slot is in use, because dropping the slot
    under a running relay would make it fail with a less clear error.
    """
    dropped: list[str] = []
    slot = read_slot(conn, settings.cdc.slot_name)
    if slot is not None:
        if slot.active:
            raise SlotInUse(f"Replication slot {slot.name!r} is in use; stop `personalization cdc run` first.")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (settings.cdc.slot_name,))
        dropped.append(f"slot {settings.cdc.slot_name}")
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (settings.cdc.publication_name,)
    ).fetchone()
    if exists is not None:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(settings.cdc.publication_name)))
        dropped.append(f"publication {settings.cdc.publication_name}")
    if not keep_offsets and stored_lsn(conn, settings) is not None:
        clear_offsets(conn, settings)
        dropped.append("stored offsets")
    return dropped
