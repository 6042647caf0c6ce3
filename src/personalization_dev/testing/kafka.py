"""Pytest fixtures and helpers for tests that need a Kafka-compatible broker.

Register the fixtures in a ``conftest.py`` with::

    pytest_plugins = ["personalization_dev.testing.kafka"]

``kafka_bootstrap`` is session-scoped: one memory-only broker serves the whole run, so
tests isolate themselves with their own topic names and a fresh consumer group id each.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Message
from psycopg import sql

from personalization.store.urls import with_dbname
from personalization_dev.broker import LocalBroker
from personalization_dev.relayproc import relay_env
from personalization_dev.testing.databases import drop_database

__all__ = [
    "consume",
    "kafka_bootstrap",
    "new_consumer",
    "postgres_binaries",
    "private_postgres",
    "relay_env",
    "scratch_database",
]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a Tansu broker started for this test session."""
    with LocalBroker() as bootstrap:
        yield bootstrap


def new_consumer(bootstrap: str, *topics: str) -> Consumer:
    """A consumer reading ``topics`` from the beginning in a group of its own.

    A fresh group id and a short session timeout avoid Tansu's consumer-group lock-up
    when every member of a group leaves during a rebalance.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    if topics:
        consumer.subscribe(list(topics))
    return consumer


def consume(
    consumer: Consumer,
    count: int,
    timeout_s: float = 30.0,
    *,
    idle_s: float | None = None,
) -> list[Message]:
    """Poll until ``count`` messages arrived or ``timeout_s`` passed.

    With ``idle_s`` it keeps reading after ``count`` until nothing arrived for that long,
    which lets a test see duplicates delivered after the expected messages.
    """
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline:
        if len(messages) >= count and (idle_s is None or time.monotonic() - last > idle_s):
            break
        batch = consumer.consume(num_messages=1000, timeout=0.2)
        for message in batch:
            if message.error() is None:
                messages.append(message)
                last = time.monotonic()
    return messages


def _migrate(url: str) -> None:
    try:
        from personalization.store.migrate import upgrade
    except ImportError:  # the shared runner is not there yet: apply the files in order
        pass
    else:
        upgrade(url)
        return
    migrations = Path(__file__).resolve().parent.parent / "store" / "migrations"
    with psycopg.connect(url, autocommit=True) as conn:
        for path in sorted(migrations.glob("*.sql")):
            if not path.name.endswith(".rollback.sql"):
                conn.execute(path.read_bytes())


@contextlib.contextmanager
def scratch_database(admin_url: str, *, template: str | None = None) -> Iterator[str]:
    """A migrated database next to ``admin_url``'s, dropped (with its slots) afterwards.

    Cloned from ``template`` (an already migrated database) when given, else migrated
    here.  The relay's tests need one database for a whole module (a JVM start per test
    would be too slow), which is why this exists beside the per-test ``db_url`` fixture.
    """
    name = f"cdc_test_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        if template is None:
            _migrate(with_dbname(admin_url, name))
        yield with_dbname(admin_url, name)
    finally:
        drop_database(admin_url, name)


def postgres_binaries() -> Path | None:
    """The directory of the newest installed PostgreSQL server binaries, if any."""
    root = Path("/usr/lib/postgresql")
    found = sorted(root.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])) if root.exists() else []
    return found[-1].parent if found else None


@contextlib.contextmanager
def private_postgres(*, wal_level: str = "logical") -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free loopback port; yields its admin URL.

    Logical slot creation waits for every transaction open anywhere in the cluster, so a
    test elsewhere that leaves a session "idle in transaction" on a shared server would
    stall every relay start; the change-stream tests therefore get a cluster of their own.
    Durability is off (fsync) because the cluster is deleted afterwards.
    """
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = postgres_binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb) are not installed")
    # initdb refuses to run as root; the cluster then belongs to the postgres account.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    workdir = tempfile.mkdtemp(prefix="pz-cdc-pg-")
    if as_user:
        shutil.chown(workdir, "postgres")
    data = os.path.join(workdir, "data")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-N"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {workdir} -c wal_level={wal_level} "
        "-c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", data]
    # Output to -l: a captured pipe would be inherited by the server and never reach EOF.
    subprocess.run(
        [*pg_ctl, "-l", os.path.join(workdir, "server.log"), "-o", options, "-w", "start"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*pg_ctl, "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        shutil.rmtree(workdir, ignore_errors=True)
