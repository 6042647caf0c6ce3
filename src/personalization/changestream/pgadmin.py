"""PostgreSQL side of the relay: pre-flight checks, slot, publication and stored offsets.

Everything here runs before the JVM starts, so that a misconfigured database fails fast
with one message that names the fix instead of a Debezium stack trace.  The statements
are the store's (:mod:`personalization.store.changestream`); here are the decisions and
the messages.
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

from personalization.changestream.capture import captured_tables
from personalization.config import Settings
from personalization.store import changestream as pg
from personalization.store.changestream import OFFSETS_DDL, AdminConnection

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
    "prepare",
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


def connect(settings: Settings) -> AdminConnection:
    """An autocommit connection (slot functions cannot run inside a transaction block)."""
    return pg.connect(settings.database.url)


def read_slot(conn: AdminConnection, slot_name: str) -> SlotInfo | None:
    """The slot row, with the WAL it keeps from being recycled, or None if absent."""
    row = pg.slot_row(conn, slot_name)
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


def stored_lsn(conn: AdminConnection, settings: Settings) -> int | None:
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
    if not pg.table_exists(conn, settings.cdc.offsets_table):
        return None
    lsns: list[int] = []
    for value in pg.offset_values(conn, settings.cdc.offsets_table):
        if value is None:
            continue
        lsn = json.loads(value).get("lsn")
        if lsn is not None:
            lsns.append(int(lsn))
    return max(lsns) if lsns else None


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


def slot_lsn(conn: AdminConnection, settings: Settings) -> int:
    """The slot's confirmed position as an integer LSN."""
    slot = read_slot(conn, settings.cdc.slot_name)
    if slot is None or slot.confirmed_flush_lsn is None:
        raise CdcSetupError(f"replication slot {settings.cdc.slot_name!r} has no confirmed position")
    return _lsn_to_int(slot.confirmed_flush_lsn)


def seed_jdbc_offsets(conn: AdminConnection, settings: Settings, lsn: int) -> None:
    """Store the initial offset in the JDBC offset table (created here if missing)."""
    key, value = initial_offset(settings, lsn)
    pg.insert_offset(conn, settings.cdc.offsets_table, str(uuid.uuid4()), key, value)


def clear_offsets(conn: AdminConnection, settings: Settings) -> None:
    """Forget the stored position (file removed, or the offsets table dropped)."""
    if settings.cdc.offsets_file:
        with contextlib.suppress(FileNotFoundError):
            os.remove(settings.cdc.offsets_file)
        return
    pg.drop_table(conn, settings.cdc.offsets_table)


def _lsn_to_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def preflight(conn: AdminConnection, settings: Settings) -> None:
    """Refuse to start on a database that would make Debezium fail or silently skip rows.

    Checks ``wal_level``, the replication privilege, the slot's plugin/database/state and
    whether stored offsets still belong to this database and slot.
    """
    level = pg.wal_level(conn)
    if level != "logical":
        raise CdcSetupError(
            f"PostgreSQL has wal_level={level}, but change data capture needs logical "
            "decoding. Fix: run `ALTER SYSTEM SET wal_level = logical;` as a superuser and "
            "restart PostgreSQL (also check max_replication_slots >= 1 and "
            "max_wal_senders >= 1)."
        )
    role = pg.replication_role(conn)
    if role is None or not role[1]:
        user = None if role is None else role[0]
        raise CdcSetupError(
            f"Role {user!r} may not stream changes. Fix: `ALTER ROLE {user} WITH REPLICATION;` "
            "(and make it owner of the captured tables, or create the publication "
            f"{settings.cdc.publication_name!r} as their owner)."
        )
    slot = read_slot(conn, settings.cdc.slot_name)
    current_db = pg.current_database(conn)
    if slot is not None:
        if slot.plugin != "pgoutput" or slot.database != current_db:
            raise CdcSetupError(
                f"Replication slot {slot.name!r} belongs to database {slot.database!r} with "
                f"plugin {slot.plugin!r}; the relay needs one for {current_db!r} with "
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
        current = pg.current_wal_lsn(conn)
        if lsn > _lsn_to_int(current):
            raise CdcSetupError(
                f"Stored offsets point at LSN {lsn}, beyond the end of this database's WAL "
                f"({current}): they belong to another (older or recreated) database. " + RECOVERY_HELP
            )


def ensure_publication_and_slot(conn: AdminConnection, settings: Settings) -> bool:
    """Create the project's publication and slot if missing; True when the slot is new.

    The slot is created here rather than by Debezium so that the stream's start is the
    moment this command ran, and so that the slot is never silently re-created by the
    connector after it was lost (``preflight`` refuses that case).
    """
    exists = pg.publication_exists(conn, settings.cdc.publication_name)
    try:
        # When it exists, setting its table list keeps it in step with cdc_capture_profile.
        pg.set_publication(conn, settings.cdc.publication_name, captured_tables(settings), create=not exists)
    except pg.InsufficientPrivilege as exc:
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


def _create_slot(conn: AdminConnection, settings: Settings) -> None:
    """Create the logical slot, bounded in time.

    PostgreSQL only finishes creating a logical slot once every transaction that holds an
    xid anywhere in the cluster has ended; one session left "idle in transaction" makes it
    wait forever.  The wait is announced, bounded by ``cdc_slot_create_timeout_s``, and a
    timeout names the sessions to end.
    """
    writers = pg.open_writers(conn)
    if writers:
        log.info("creating slot %s waits for these transactions to end: %s", settings.cdc.slot_name, writers)
    timeout_ms = int(settings.cdc.slot_create_timeout_s * 1000)
    try:
        pg.create_slot(conn, settings.cdc.slot_name, timeout_ms)
    except pg.StatementTimedOut as exc:
        writers = pg.open_writers(conn)
        described = "; ".join(
            f"pid {pid} in {db} ({state}, transaction open for {age})" for pid, db, state, age in writers
        )
        raise CdcSetupError(
            f"Creating replication slot {settings.cdc.slot_name!r} waited "
            f"{settings.cdc.slot_create_timeout_s:.0f} s for running transactions to end: "
            f"{described or 'none left'}. Fix: end them (COMMIT/ROLLBACK, or "
            "`SELECT pg_terminate_backend(<pid>)`) and start the relay again."
        ) from exc


def drop_slot_and_publication(
    conn: AdminConnection, settings: Settings, *, keep_offsets: bool
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
        pg.drop_slot(conn, settings.cdc.slot_name)
        dropped.append(f"slot {settings.cdc.slot_name}")
    if pg.publication_exists(conn, settings.cdc.publication_name):
        pg.drop_publication(conn, settings.cdc.publication_name)
        dropped.append(f"publication {settings.cdc.publication_name}")
    if not keep_offsets and stored_lsn(conn, settings) is not None:
        clear_offsets(conn, settings)
        dropped.append("stored offsets")
    return dropped


def prepare(settings: Settings) -> tuple[bool, int | None]:
    """Check the database and create what the relay needs; ``(slot created now, LSN to seed or None)``.

    On a first start (or after ``reset-offsets``) in ``no_data`` mode the relay must resume
    exactly at the slot: the slot's LSN is returned, and stored here when offsets live in
    the JDBC table (the file store is seeded by the relay once the JVM runs).
    """
    with connect(settings) as conn:
        preflight(conn, settings)
        created = ensure_publication_and_slot(conn, settings)
        seed_lsn: int | None = None
        if settings.cdc.snapshot_mode == "no_data" and stored_lsn(conn, settings) is None:
            seed_lsn = slot_lsn(conn, settings)
            if not settings.cdc.offsets_file:
                seed_jdbc_offsets(conn, settings, seed_lsn)
    return created, seed_lsn
