"""Bad input to any command: exit code 2, one ``error: ...`` line on stderr, nothing written.

Each command runs as a user would run it (a subprocess of the installed entry point), so
the exit code and the exact stderr are the ones a shell or a scheduler sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
import redis
from psycopg import sql

from personalization.cli.common import ExitCode
from personalization.config import Settings

CLI = str(Path(sys.executable).parent / "personalization")


def _written(db_url: str, redis_url: str, root: Path) -> tuple[object, ...]:
    """Everything a command could have written: row counts of every table, Redis keys, files."""
    with psycopg.connect(db_url) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
        ).fetchall()
        counts = [
            (schema, name, conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
             .fetchone())
            for schema, name in tables
        ]
    with redis.Redis.from_url(redis_url) as r:
        keys = sorted(r.keys("*"))
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    return tuple(counts), tuple(keys), tuple(files)


def _bad_jsonl(tmp: Path) -> str:
    # A good row, then a truncated one: the whole file is validated before anything is written.
    dim = Settings().embedding.dim
    path = tmp / "bad.jsonl"
    path.write_bytes(orjson.dumps({"content_id": "a", "embedding": [0.5] * dim}) + b'\n{"content_id": "b", "emb\n')
    return str(path)


def _bad_entities(tmp: Path) -> str:
    path = tmp / "entities.csv"
    path.write_text("user_id,when\nx,y\n")
    return str(path)


# (argv builder, text the one error line must contain)
CASES = {
    "users erase: not a UUID": (lambda tmp: ["users", "erase", "not-a-uuid"], "user_id: not a UUID"),
    "users export: unknown user": (lambda tmp: ["users", "export", str(uuid.uuid4())], "user not found"),
    "content import: malformed file": (lambda tmp: ["content", "import", _bad_jsonl(tmp)], "line 2: not JSON"),
    "jobs nightly: impossible date": (lambda tmp: ["jobs", "nightly", "--as-of", "2026-02-30"], "not a date"),
    "features export: bad entities": (
        lambda tmp: ["features", "export", "--entities", _bad_entities(tmp), "--out", str(tmp / "out.parquet")],
        "event_timestamp",
    ),
    "learner recompute: not a UUID": (lambda tmp: ["learner", "recompute", "--user", "x"], "--user: not a UUID"),
    "keys revoke: unknown key": (lambda tmp: ["keys", "revoke", "0123456789abcdef"], "not found"),
    "cdc drop-slot: no --yes": (lambda tmp: ["cdc", "drop-slot"], "refusing without --yes"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(
    case: str, tmp_path: Path, db_url: str, redis_url: str
) -> None:
    argv, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    args = argv(work)
    env = os.environ | {
        "PERSONALIZATION_DATABASE_URL": db_url,
        "PERSONALIZATION_REDIS_URL": redis_url,
        "PERSONALIZATION_NIGHTLY_TIMEZONE": "UTC",
        "PERSONALIZATION_API_KEY_SECRET": "cli-test-secret",
        "PERSONALIZATION_ERASE_KAFKA_TOMBSTONES": "false",
        "COLUMNS": "40",  # a narrow terminal must not wrap the error line
    }
    before = _written(db_url, redis_url, work)
    proc = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120, cwd=work)
    assert proc.returncode == ExitCode.BAD_INPUT == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0], proc.stderr
    assert proc.stdout == ""
    assert _written(db_url, redis_url, work) == before


def test_typer_usage_errors_are_2_as_well() -> None:
    proc = subprocess.run([CLI, "users", "erase"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.BAD_INPUT


@pytest.mark.parametrize("argv", [["keys", "list"], ["users", "export", str(uuid.UUID(int=1))]])
def test_postgres_down_exits_4_with_one_error_line(argv: list[str], redis_url: str) -> None:
    env = os.environ | {
        # Nothing listens on port 1: every connection attempt is refused at once.
        "PERSONALIZATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/personalization",
        "PERSONALIZATION_DB_CONNECT_TIMEOUT_S": "1",
        "PERSONALIZATION_REDIS_URL": redis_url,
        "PERSONALIZATION_API_KEY_SECRET": "cli-test-secret",
    }
    proc = subprocess.run([CLI, *argv], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.UNAVAILABLE == 4, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    # One line: not a warning per retry of the connection pool before it.
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_bad_entities_file_is_bad_input_even_with_postgres_down(tmp_path: Path) -> None:
    env = os.environ | {"PERSONALIZATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/personalization",
                        "PERSONALIZATION_DB_CONNECT_TIMEOUT_S": "1"}
    for entities, message in ((tmp_path / "missing.csv", "no such file"), (_bad_entities(tmp_path), "event_timestamp")):
        proc = subprocess.run([CLI, "features", "export", "--entities", str(entities), "--out",
                               str(tmp_path / "out.parquet")], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == ExitCode.BAD_INPUT, (proc.returncode, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out.parquet").exists()
