"""What every benchmark shares: a scratch database and a percentile."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from personalization.store import migrate
from personalization.store.urls import dbname_of, with_dbname
from personalization_dev.relayproc import relay_env


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def scratch_database(database_url: str, tag: str) -> Iterator[str]:
    """A migrated throw-away database beside the configured one, dropped afterwards.

    A database holding a replication slot cannot be dropped, so the cleanup ends the
    sessions still connected (a relay may wait in slot creation) and drops its slots first.
    """
    name = f"{dbname_of(database_url)}_bench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = with_dbname(database_url, name)
    admin = with_dbname(database_url, "postgres")
    migrate.upgrade(url)  # creates the database
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchall():
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def bench_relay_env(url: str, bootstrap: str, tag: str) -> dict[str, str]:
    """Environment of a benchmark's relay: slot and publication named ``tag`` (dropped with the
    scratch database), events only (the profile table is not captured)."""
    return relay_env(url, bootstrap, tag, PERSONALIZATION_CDC_SLOT_NAME=tag, PERSONALIZATION_CDC_PUBLICATION_NAME=tag,
                     PERSONALIZATION_CDC_CAPTURE_PROFILE="false")
