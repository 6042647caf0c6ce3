"""Dropping the tests' scratch databases without leaving replication slots behind."""

from __future__ import annotations

import contextlib

import psycopg
from psycopg import sql

__all__ = ["drop_database"]


def drop_database(admin_url: str, name: str) -> None:
    """Drop the test database ``name`` and first every replication slot on it.

    A database with a slot cannot be dropped, and a slot left behind keeps every WAL
    segment written after it on the server's disk for good, every other test's included,
    until the disk is full and PostgreSQL stops.  A relay still attached is cut off first.
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        slots = conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
            (name,),
        ).fetchall()
        for slot, pid in slots:
            if pid is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
