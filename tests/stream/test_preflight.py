"""Databases that cannot serve the relay fail before the JVM starts, with a named fix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from personalization.changestream import pgadmin
from personalization.cli.cdc import app as cdc_app
from personalization.config import Settings
from personalization_dev.testing.kafka import postgres_binaries, private_postgres


def _settings(db_url: str, **cdc: object) -> Settings:
    return Settings(database={"url": db_url}, cdc={"slot_name": f"pre_{uuid.uuid4().hex[:10]}", **cdc})


def _env(settings: Settings) -> dict[str, str]:
    return {
        "PERSONALIZATION_DATABASE_URL": settings.database.url,
        "PERSONALIZATION_CDC_SLOT_NAME": settings.cdc.slot_name,
        "PERSONALIZATION_CDC_METRICS_PORT": "0",
        "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }


@pytest.fixture
def slot_cleanup() -> Iterator[list[Settings]]:
    created: list[Settings] = []
    yield created
    for settings in created:
        with pgadmin.connect(settings) as conn:
            pgadmin.drop_slot_and_publication(conn, settings, keep_offsets=False)


@pytest.fixture(scope="module")
def replica_only_cluster() -> Iterator[str]:
    """A throw-away PostgreSQL cluster with wal_level=replica (the default)."""
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL server binaries (initdb) not installed")
    with private_postgres(wal_level="replica") as url:
        yield url


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


def test_missing_replication_privilege_names_the_fix(cdc_fresh_db: str) -> None:
    role = f"norepl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cdc_fresh_db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        as_role = cdc_fresh_db.replace("postgres@", f"{role}@", 1)
        settings = _settings(as_role)
        with (
            pgadmin.connect(settings) as conn,
            pytest.raises(pgadmin.CdcSetupError, match=f"ALTER ROLE {role} WITH REPLICATION"),
        ):
            pgadmin.preflight(conn, settings)
        result = CliRunner().invoke(cdc_app, ["run"], env=_env(settings))
        assert result.exit_code == 2
    finally:
        with psycopg.connect(cdc_fresh_db, autocommit=True) as conn:
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


def test_offsets_without_slot_are_refused(cdc_fresh_db: str) -> None:
    settings = _settings(cdc_fresh_db)
    with pgadmin.connect(settings) as conn:
        _store_offset(conn, settings.cdc.offsets_table, 1000)
        with pytest.raises(pgadmin.CdcSetupError) as info:
            pgadmin.preflight(conn, settings)
    assert "does not exist" in str(info.value)
    assert "personalization cdc reset-offsets --yes" in str(info.value)


def test_offsets_from_another_database_are_refused(cdc_fresh_db: str, slot_cleanup: list[Settings]) -> None:
    settings = _settings(cdc_fresh_db)
    slot_cleanup.append(settings)
    with pgadmin.connect(settings) as conn:
        pgadmin.ensure_publication_and_slot(conn, settings)
        _store_offset(conn, settings.cdc.offsets_table, 1 << 60)
        with pytest.raises(pgadmin.CdcSetupError, match="beyond the end"):
            pgadmin.preflight(conn, settings)


def test_file_offsets_are_read(cdc_fresh_db: str, tmp_path: Path) -> None:
    # The file store is a Java-serialized map holding the offset JSON as raw bytes.
    path = tmp_path / "offsets.dat"
    path.write_bytes(b'\xac\xed\x00\x05sr\x00\x11java.util.HashMap...{"lsn":4242,"txId":7}x')
    settings = _settings(cdc_fresh_db, offsets_file=str(path))
    with pgadmin.connect(settings) as conn:
        assert pgadmin.stored_lsn(conn, settings) == 4242
        pgadmin.clear_offsets(conn, settings)
        assert pgadmin.stored_lsn(conn, settings) is None
    assert not path.exists()


def test_drop_slot_retires_everything(cdc_fresh_db: str) -> None:
    settings = _settings(cdc_fresh_db)
    with pgadmin.connect(settings) as conn:
        assert pgadmin.ensure_publication_and_slot(conn, settings) is True
        assert pgadmin.ensure_publication_and_slot(conn, settings) is False
    env = _env(settings)
    refused = CliRunner().invoke(cdc_app, ["drop-slot"], env=env)
    assert refused.exit_code == 2
    result = CliRunner().invoke(cdc_app, ["drop-slot", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert f"slot {settings.cdc.slot_name}" in result.output
    with pgadmin.connect(settings) as conn:
        assert pgadmin.read_slot(conn, settings.cdc.slot_name) is None
        assert conn.execute(
            "SELECT count(*) FROM pg_publication WHERE pubname = %s",
            (settings.cdc.publication_name,),
        ).fetchone() == (0,)


def test_slot_creation_blocked_by_open_transaction_names_it(cdc_fresh_db: str) -> None:
    settings = _settings(cdc_fresh_db, slot_create_timeout_s=1.0)
    with psycopg.connect(cdc_fresh_db) as blocker:
        # An open transaction holding an xid: logical slot creation must wait for it.
        blocker.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (uuid.uuid4(),))
        pid = blocker.info.backend_pid
        with pgadmin.connect(settings) as conn, pytest.raises(pgadmin.CdcSetupError) as info:
            pgadmin.ensure_publication_and_slot(conn, settings)
        blocker.rollback()
    assert f"pid {pid}" in str(info.value) and "pg_terminate_backend" in str(info.value)
    with pgadmin.connect(settings) as conn:
        assert pgadmin.read_slot(conn, settings.cdc.slot_name) is None
        pgadmin.drop_slot_and_publication(conn, settings, keep_offsets=False)
