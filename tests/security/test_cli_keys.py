"""``personalization keys create|list|revoke`` against a real database."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from personalization.cli.main import app as cli_app
from personalization.config import get_settings


@pytest.fixture
def cli_env(db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    monkeypatch.setenv("PERSONALIZATION_API_KEY_SECRET", "cli-test-secret")
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_create_list_revoke(cli_env: CliRunner, db_url: str) -> None:
    res = cli_env.invoke(cli_app, ["keys", "create", "--name", "mobile-app", "--scopes", "read,ingest", "--json"])
    assert res.exit_code == 0, res.output
    created = orjson.loads(res.stdout)
    key, key_id = created["key"], created["key_id"]
    assert key.startswith(f"pzk_{key_id}_") and created["scopes"] == ["ingest", "read"]

    res = cli_env.invoke(cli_app, ["keys", "list", "--json"])
    listed = orjson.loads(res.stdout)
    assert [k["key_id"] for k in listed] == [key_id] and key not in res.stdout

    res = cli_env.invoke(cli_app, ["keys", "revoke", key_id])
    assert res.exit_code == 0 and f"revoked {key_id}" in res.stdout
    assert orjson.loads(cli_env.invoke(cli_app, ["keys", "list", "--json"]).stdout) == []
    assert len(orjson.loads(cli_env.invoke(cli_app, ["keys", "list", "--all", "--json"]).stdout)) == 1
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT action, actor, target FROM audit_log ORDER BY audit_id").fetchall()
        stored = conn.execute("SELECT api_keys::text FROM api_keys").fetchone()
    assert [(r[0], r[2]) for r in rows] == [("key.create", key_id), ("key.revoke", key_id)]
    assert all(r[1].startswith("cli:") for r in rows)
    assert stored is not None and key.rsplit("_", 1)[-1] not in stored[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "x", "--scopes", "read,root"], "unknown scope 'root'"),
        (["keys", "create", "--name", "x", "--scopes", ","], "at least one scope"),
        (["keys", "create", "--name", "x'; DROP TABLE api_keys; --", "--scopes", "read"], "name must be"),
        (["keys", "create", "--name", "a\nInjected: 1", "--scopes", "read"], "name must be"),
        (["keys", "revoke", "0123456789abcdef"], "api key 0123456789abcdef not found"),
        (["keys", "revoke", "1 OR 1=1"], "key_id must be 16 lowercase hex digits"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli_env: CliRunner, db_url: str, args: list[str],
                                                  message: str) -> None:
    res = cli_env.invoke(cli_app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (0,)


def test_duplicate_live_name_is_refused(cli_env: CliRunner) -> None:
    assert cli_env.invoke(cli_app, ["keys", "create", "--name", "dup", "--scopes", "read"]).exit_code == 0
    res = cli_env.invoke(cli_app, ["keys", "create", "--name", "dup", "--scopes", "read"])
    assert res.exit_code == 3 and "already exists" in res.output
