"""A freshly migrated database equals the specification's SQL (plus only additive objects)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from personalization.store.urls import with_dbname

HERE = Path(__file__).parent
SPEC_MD = HERE.parent.parent / "shared" / "spec" / "personalization-signal-schema.md"
SPEC_COPY = HERE / "data" / "spec_schema.sql"
SCHEMA_DOC = HERE.parent / "docs" / "schema.md"
SPEC_TABLES = ("user_profile", "user_traits", "personalization_events")
SPEC_VIEW = "user_signal_rollups"


def _spec_sql() -> str:
    return SPEC_COPY.read_text()


def test_spec_copy_matches_shared_spec() -> None:
    if not SPEC_MD.exists():
        pytest.skip("shared/ spec not beside this checkout")
    block = re.search(r"```sql\n(.*?)```", SPEC_MD.read_text(), re.S)
    assert block is not None
    body = SPEC_COPY.read_text().split("\n", 2)[2]
    assert body == block.group(1)


def test_schema_doc_holds_the_contract_sql() -> None:
    # The repository documents the contract itself (docs/schema.md); its SQL block is the one
    # the conformance tests below apply, so the document cannot drift from what is tested.
    block = re.search(r"```sql\n(.*?)```", SCHEMA_DOC.read_text(), re.S)
    assert block is not None
    body = SPEC_COPY.read_text().split("\n", 2)[2]
    assert block.group(1) == body


@pytest.fixture
def spec_db_url(pg_admin_url: str) -> Iterator[str]:
    name = f"pz_spec_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(pg_admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_spec_sql().encode())
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _columns(conn: psycopg.Connection[Any], rel: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (rel,),
    ).fetchall()


def _constraints(conn: psycopg.Connection[Any], rel: str) -> set[tuple[Any, ...]]:
    rows = conn.execute(
        """
        SELECT c.contype, pg_get_constraintdef(c.oid), c.confdeltype, c.confupdtype
        FROM pg_constraint c WHERE c.conrelid = %s::regclass
        """,
        (rel,),
    ).fetchall()
    return set(rows)


def _indexes(conn: psycopg.Connection[Any], rel: str) -> set[str]:
    rows = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s", (rel,)
    ).fetchall()
    return {r[0] for r in rows}


def _view_def(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_get_viewdef(%s::regclass, true)", (SPEC_VIEW,)).fetchone()
    assert row is not None
    return " ".join(str(row[0]).split())


def test_migrated_schema_equals_spec(db_url: str, spec_db_url: str) -> None:
    with psycopg.connect(db_url) as ours, psycopg.connect(spec_db_url) as spec:
        for table in (*SPEC_TABLES, SPEC_VIEW):
            # Columns: names, types (with typmods such as NUMERIC(4,3)), NOT NULL, defaults.
            assert _columns(ours, table) == _columns(spec, table), table
        for table in SPEC_TABLES:
            # Keys, foreign keys and their ON DELETE / ON UPDATE actions: exactly the spec's.
            assert _constraints(ours, table) == _constraints(spec, table), table
            # Every index of the spec exists verbatim; extra indexes are allowed.
            assert _indexes(spec, table) <= _indexes(ours, table), table
        # The materialized view: same query, hence the same grouping.
        assert _view_def(ours) == _view_def(spec)
        kinds = ours.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s) ORDER BY relname",
            ([*SPEC_TABLES, SPEC_VIEW],),
        ).fetchall()
        assert dict(kinds) == {
            "personalization_events": "r",
            "user_profile": "r",
            "user_traits": "r",
            "user_signal_rollups": "m",
        }


def test_fk_actions_are_the_specs(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT conrelid::regclass::text, confdeltype FROM pg_constraint "
                "WHERE contype = 'f' AND confrelid = 'user_profile'::regclass "
                "AND conrelid::regclass::text = ANY(%s)",
                (["user_traits", "personalization_events"],),
            ).fetchall()
        )
    # c = CASCADE, n = SET NULL
    assert rows == {"user_traits": "c", "personalization_events": "n"}


def test_rollups_refresh_concurrently(db_url: str) -> None:
    """The unique index beside the spec lets the nightly job refresh without blocking readers."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        uid = uuid.uuid4()
        conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (uid,))
        for user in (uid, None, None):
            conn.execute(
                "INSERT INTO personalization_events (user_id, content_id, content_type, signal_type, signal_weight,"
                " occurred_at) VALUES (%s, 'JHN.3', 'passage', 'view', 0.5, now())",
                (user,),
            )
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY user_signal_rollups")
        rows = conn.execute(
            "SELECT user_id, event_count FROM user_signal_rollups ORDER BY user_id NULLS LAST"
        ).fetchall()
    assert rows == [(uid, 1), (None, 2)]


def test_upgrade_is_idempotent_and_recorded(db_url: str) -> None:
    from personalization.store import migrate

    assert migrate.upgrade(db_url) == []
    with psycopg.connect(db_url) as conn:
        applied = [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc")]
    assert applied[:2] == ["0001_spec_schema", "0002_write_path_support"]
    assert set(applied) == {p.stem for p in migrate.migration_files()}
