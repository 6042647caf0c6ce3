"""A test database is dropped with the replication slots left on it (they would hold WAL for good)."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import psycopg
import pytest
from psycopg import sql

from personalization.store.urls import with_dbname
from personalization_dev.testing.databases import drop_database
from personalization_dev.testing.waiting import wait_until


def _slot_active(admin_url: str, slot: str) -> bool:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return bool(row and row[0])


def test_drop_database_drops_its_idle_and_attached_slots(pg_admin_url: str) -> None:
    recvlogical = shutil.which("pg_recvlogical")
    if recvlogical is None:
        pytest.skip("pg_recvlogical (PostgreSQL client tools) is not on PATH")
    name = f"pz_test_{uuid.uuid4().hex[:12]}"
    idle, attached = (f"t_{uuid.uuid4().hex[:12]}" for _ in range(2))
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    reader: subprocess.Popen[bytes] | None = None
    try:
        url = with_dbname(pg_admin_url, name)
        with psycopg.connect(url, autocommit=True) as conn:
            for slot in (idle, attached):
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
        # A reader still streaming from one slot, as a relay alive at teardown would be.
        reader = subprocess.Popen([recvlogical, "-d", url, "--slot", attached, "--start", "--no-loop", "-f", "-"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _slot_active(pg_admin_url, attached), 30, f"pg_recvlogical to attach to {attached}")
    finally:
        drop_database(pg_admin_url, name)
        if reader is not None:
            reader.terminate()
            reader.wait(30)
    with psycopg.connect(pg_admin_url) as admin:
        left = admin.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name IN (%s, %s)",
                             (idle, attached)).fetchall()
        db = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert left == [] and db is None
