"""Databases that cannot serve the relay fail before the JVM starts, with a named fix."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from personalization.cli.cdc import app as cdc_app
from personalization.stream import pgadmin
from personalization.stream.settings import CdcSettings

PG_BIN = Path("/usr/lib/postgresql")


def _settings(db_url: str, **extra: object) -> CdcSettings:
    return CdcSettings(database_url=db_url, cdc_slot_name=f"pre_{uuid.uuid4().hex[:10]}", **extra)


def _env(settings: CdcSettings) -> dict[str, str]:
    return {
        "PERSONALIZATION_DATABASE_URL": settings.database_url,
        "PERSONALIZATION_CDC_SLOT_NAME": settings.cdc_slot_name,
        "PERSONALIZATION_CDC_METRICS_PORT": "0",
        "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }


@pytest.fixture
def slot_cleanup() -> Iterator[list[CdcSettings]]:
    created: list[CdcSettings] = []
    yield created
    for settings in created:
        with pgadmin.connect(settings) as conn:
            pgadmin.drop_slot_and_publication(conn, settings, keep_offsets=False)


def _pg_binaries() -> Path | None:
    versions = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.exists() else []
    return versions[-1].parent if versions else None


@pytest.fixture(scope="module")
def replica_only_cluster() -> Iterator[str]:
    """A throw-away PostgreSQL cluster with wal_level=replica (the default)."""
    bindir = _pg_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb) not installed")
    # initdb refuses to run as root; use the postgres system account then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    workdir = tempfile.mkdtemp(prefix="pg-replica-")
    if as_user:
        shutil.chown(workdir, "postgres")
    data = os.path.join(workdir, "data")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {workdir} -c wal_level=replica"
    # The server's output goes to -l: a captured pipe would stay open in the server and
    # keep subprocess.run waiting for EOF forever.
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            data,
            "-l",
            os.path.join(workdir, "server.log"),
            "-o",
            options,
            "-w",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        shutil.rmtree(workdir, ignore_errors=True)


def test_wal_level_not_logical_names_the_fix(replica_only_cluster: str) -> None:
    settings = _settings(replica_only_cluster)
    result = CliRunner().invoke(cdc_app, ["run"], env=_env(settings))
    assert result.exit_code == 2
    with psycopg.connect(replica_only_cluster) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    with (
        pgadmin.connect(settings) as conn,
        pytest.raises(pgadmin.CdcSetupError, match="ALTER SYSTEM SET wal_level = logical"),
    ):
        pgadmin.preflight(conn, settings)


def test_missing_replication_privilege_names_the_fix(db_url: str) -> None:
    role = f"norepl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        as_role = db_url.replace("postgres@", f"{role}@", 1)
        settings = _settings(as_role)
        with (
            pgadmin.connect(settings) as conn,
            pytest.raises(pgadmin.CdcSetupError, match=f"ALTER ROLE {role} WITH REPLICATION"),
        ):
            pgadmin.preflight(conn, settings)
        result = CliRunner().invoke(cdc_app, ["run"], env=_env(settings))
        assert result.exit_code == 2
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _store_offset(conn: psycopg.Connection[tuple[object, ...]], table: str, lsn: int) -> None:
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id VARCHAR(36) NOT NULL PRIMARY KEY, offset_key VARCHAR(1255), "
            "offset_val VARCHAR(1255), record_insert_ts TIMESTAMP NOT NULL, "
            "record_insert_seq INTEGER NOT NULL)"
        ).format(sql.Identifier(table))
    )
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, now(), 1)").format(sql.Identifier(table)),
        (str(uuid.uuid4()), '["x",{"server":"personalization"}]', f'{{"lsn":{lsn},"txId":1}}'),
    )


def test_offsets_without_slot_are_refused(db_url: str) -> None:
    settings = _settings(db_url)
    with pgadmin.connect(settings) as conn:
        _store_offset(conn, settings.offsets_table, 1000)
        with pytest.raises(pgadmin.CdcSetupError) as info:
            pgadmin.preflight(conn, settings)
    assert "does not exist" in str(info.value)
    assert "personalization cdc reset-offsets --yes" in str(info.value)


def test_offsets_from_another_database_are_refused(db_url: str, slot_cleanup: list[CdcSettings]) -> None:
    settings = _settings(db_url)
    slot_cleanup.append(settings)
    with pgadmin.connect(settings) as conn:
        pgadmin.ensure_publication_and_slot(conn, settings)
        _store_offset(conn, settings.offsets_table, 1 << 60)
        with pytest.raises(pgadmin.CdcSetupError, match="beyond the end"):
            pgadmin.preflight(conn, settings)


def test_file_offsets_are_read(db_url: str, tmp_path: Path) -> None:
    # The file store is a Java-serialized map holding the offset JSON as raw bytes.
    path = tmp_path / "offsets.dat"
    path.write_bytes(b'\xac\xed\x00\x05sr\x00\x11java.util.HashMap...{"lsn":4242,"txId":7}x')
    settings = _settings(db_url, cdc_offsets_file=str(path))
    with pgadmin.connect(settings) as conn:
        assert pgadmin.stored_lsn(conn, settings) == 4242
        pgadmin.clear_offsets(conn, settings)
        assert pgadmin.stored_lsn(conn, settings) is None
    assert not path.exists()


def test_drop_slot_retires_everything(db_url: str) -> None:
    settings = _settings(db_url)
    with pgadmin.connect(settings) as conn:
        assert pgadmin.ensure_publication_and_slot(conn, settings) is True
        assert pgadmin.ensure_publication_and_slot(conn, settings) is False
    env = _env(settings)
    refused = CliRunner().invoke(cdc_app, ["drop-slot"], env=env)
    assert refused.exit_code == 2
    result = CliRunner().invoke(cdc_app, ["drop-slot", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert f"slot {settings.cdc_slot_name}" in result.output
    with pgadmin.connect(settings) as conn:
        assert pgadmin.read_slot(conn, settings.cdc_slot_name) is None
        assert conn.execute(
            "SELECT count(*) FROM pg_publication WHERE pubname = %s",
            (settings.cdc_publication_name,),
        ).fetchone() == (0,)


def test_slot_creation_blocked_by_open_transaction_names_it(db_url: str) -> None:
    settings = _settings(db_url, cdc_slot_create_timeout_s=1.0)
    with psycopg.connect(db_url) as blocker:
        # An open transaction holding an xid: logical slot creation must wait for it.
        blocker.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (uuid.uuid4(),))
        pid = blocker.info.backend_pid
        with pgadmin.connect(settings) as conn, pytest.raises(pgadmin.CdcSetupError) as info:
            pgadmin.ensure_publication_and_slot(conn, settings)
        blocker.rollback()
    assert f"pid {pid}" in str(info.value) and "pg_terminate_backend" in str(info.value)
    with pgadmin.connect(settings) as conn:
        assert pgadmin.read_slot(conn, settings.cdc_slot_name) is None
        pgadmin.drop_slot_and_publication(conn, settings, keep_offsets=False)
