"""``personalization content import`` of catalogue rows: passages, translations, series, tags.

Against the real PostgreSQL and Redis: what is stored, what a second import keeps,
the durable catalogue version, and bad files (exit 2, one line naming the row and the
field, nothing written).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serving_helpers import unit
from typer.testing import CliRunner

from personalization.cli.main import app
from personalization.config import Settings, get_settings
from personalization.store.db import Database
from personalization.store.serving import catalog_version


@pytest.fixture
def cli(db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    get_settings.cache_clear()
    return CliRunner()


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    return path


def _import(cli: CliRunner, *args: str) -> dict[str, Any]:
    res = cli.invoke(app, ["content", "import", *args, "--json"])
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = orjson.loads(res.output.strip().splitlines()[-1])
    return out


def _items(db_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(db_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT content_id, content_type, title, body, metadata, passage_id, translation, series, position, tags"
            " FROM content_items ORDER BY content_id"
        )
        return {r["content_id"]: r for r in cur.fetchall()}


def _embedded(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        return [r[0] for r in conn.execute("SELECT content_id FROM content_embeddings ORDER BY content_id")]


def _version(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT version FROM catalog_version").fetchone()
    assert row is not None
    return int(row[0])


def _chapter(translation: str, book: str, chapter: int, **extra: Any) -> dict[str, Any]:
    return {
        "content_id": f"{translation}:{book}.{chapter}", "content_type": "passage", "title": f"{book} {chapter}",
        "passage_id": f"{book}.{chapter}", "translation": translation, "series": book, "position": chapter,
        "tags": ["gospel", "new_testament"], **extra,
    }


def test_catalog_rows_with_embeddings(cli: CliRunner, tmp_path: Path, db_url: str) -> None:
    assert _version(db_url) == 0
    rows = [
        _chapter("KJV", "JHN", 3, embedding=unit(1).tolist(), body="For God so loved the world",
                 metadata={"verses": 36}),
        _chapter("ASV", "JHN", 3, embedding=unit(2).tolist()),
        _chapter("KJV", "JHN", 4, embedding=unit(3).tolist(), tags=["gospel", "gospel", "well"]),
    ]
    out = _import(cli, str(_jsonl(tmp_path / "c.jsonl", rows)))
    assert out["imported"] == 3 and out["embeddings"] == 3 and out["catalog_rows"] == 3
    assert out["catalog_version"] == 1 == _version(db_url)
    items = _items(db_url)
    kjv = items["KJV:JHN.3"]
    assert (kjv["passage_id"], kjv["translation"], kjv["series"], kjv["position"]) == ("JHN.3", "KJV", "JHN", 3)
    assert kjv["tags"] == ["gospel", "new_testament"]
    assert kjv["body"] == "For God so loved the world" and kjv["metadata"] == {"verses": 36}
    assert items["ASV:JHN.3"]["passage_id"] == "JHN.3" and items["ASV:JHN.3"]["metadata"] is None
    assert items["KJV:JHN.4"]["tags"] == ["gospel", "well"]  # a repeated tag is kept once
    assert _embedded(db_url) == ["ASV:JHN.3", "KJV:JHN.3", "KJV:JHN.4"]


def test_catalog_version_store_function(cli: CliRunner, tmp_path: Path, settings: Settings) -> None:
    async def read() -> int:
        db = Database(settings, min_size=1, max_size=1)
        await db.open()
        try:
            return await catalog_version(db)
        finally:
            await db.close()

    assert asyncio.run(read()) == 0
    _import(cli, str(_jsonl(tmp_path / "a.jsonl", [_chapter("KJV", "PSA", 23)])))
    assert asyncio.run(read()) == 1
    # Embedding-only imports change what an index holds too.
    _import(cli, str(_jsonl(tmp_path / "b.jsonl", [{"content_id": "KJV:PSA.23", "embedding": unit(4).tolist()}])))
    assert asyncio.run(read()) == 2


def test_catalog_only_update_keeps_what_is_not_given(cli: CliRunner, tmp_path: Path, db_url: str) -> None:
    _import(cli, str(_jsonl(tmp_path / "a.jsonl", [
        _chapter("KJV", "ROM", 8, embedding=unit(5).tolist(), body="There is therefore now no condemnation"),
    ])))
    # A catalogue-only file: no embedding column at all, no content_type for a known item.
    table = pa.table({
        "content_id": ["KJV:ROM.8", "WEB:ROM.8"],
        "content_type": [None, "passage"],
        "passage_id": [None, "ROM.8"],
        "translation": [None, "WEB"],
        "tags": [["letters", "grace"], None],
        "series": ["plan:romans-in-30-days", None],
        "position": pa.array([8, None], type=pa.float64()),  # a dataframe's integer column with a gap
    })
    pq.write_table(table, tmp_path / "b.parquet")
    out = _import(cli, str(tmp_path / "b.parquet"))
    assert out["embeddings"] == 0 and out["catalog_rows"] == 2 and out["catalog_version"] == 2
    items = _items(db_url)
    rom = items["KJV:ROM.8"]
    assert rom["tags"] == ["letters", "grace"] and rom["series"] == "plan:romans-in-30-days" and rom["position"] == 8
    assert rom["passage_id"] == "ROM.8" and rom["translation"] == "KJV"  # not given: kept
    assert rom["body"] == "There is therefore now no condemnation"
    assert items["WEB:ROM.8"]["tags"] == [] and items["WEB:ROM.8"]["position"] is None
    assert _embedded(db_url) == ["KJV:ROM.8"]


def test_an_import_may_move_items_between_passages(cli: CliRunner, tmp_path: Path, db_url: str) -> None:
    """The one-item-per-passage-and-translation rule holds on the final state, not row by row."""
    _import(cli, str(_jsonl(tmp_path / "a.jsonl", [
        {"content_id": "a", "content_type": "passage", "passage_id": "GEN.1", "translation": "KJV"},
        {"content_id": "b", "content_type": "passage", "passage_id": "GEN.2", "translation": "KJV"},
    ])))
    _import(cli, str(_jsonl(tmp_path / "b.jsonl", [
        {"content_id": "a", "passage_id": "GEN.2"},
        {"content_id": "b", "passage_id": "GEN.1"},
    ])))
    items = _items(db_url)
    assert (items["a"]["passage_id"], items["b"]["passage_id"]) == ("GEN.2", "GEN.1")


def _bad_catalog_files(tmp_path: Path) -> list[tuple[Path, str]]:
    ok = _chapter("KJV", "MAT", 5)
    cases: list[tuple[list[dict[str, Any]], str]] = [
        ([ok, {**_chapter("KJV", "MAT", 6), "tags": "gospel"}], "line 2: tags must be a list of strings"),
        ([{**ok, "tags": ["x" * 65]}], "line 1: tags[1] is longer than 64 characters"),
        ([{**ok, "tags": ["ok", 7]}], "line 1: tags[2] must be a non-empty string"),
        ([{**ok, "translation": "T" * 65}], "line 1: translation is longer than 64 characters"),
        ([{**ok, "passage_id": ""}], "line 1: passage_id must be a non-empty string"),
        ([{**ok, "passage_id": "MAT.5 "}], "line 1: passage_id 'MAT.5 ' has leading or trailing white space"),
        ([{**ok, "series": "S" * 257}], "line 1: series is longer than 256 characters"),
        ([{**ok, "position": -1}], "line 1: position must be between 0 and 2147483647"),
        ([{**ok, "position": 1.5}], "line 1: position must be a whole number"),
        ([{**ok, "position": True}], "line 1: position must be a whole number"),
        ([{**ok, "series": None}], "line 1: position is the order within a series: give series too"),
        ([{**ok, "metadata": [1]}], "line 1: metadata must be a JSON object"),
        ([{**ok, "title": 3}], "line 1: title must be a non-empty string"),
        ([{**ok, "tag": ["x"]}], "line 1: unknown field 'tag'"),
        ([{"content_id": "x"}], "line 1: nothing to import"),
        ([ok, {**ok, "content_id": "other"}], "line 2: passage MAT.5 in KJV is already 'KJV:MAT.5' (line 1)"),
        # Checked against the stored catalogue, in the transaction.
        ([{"content_id": "new", "tags": ["x"]}], "line 1: content_type is required: 'new' is not in the catalogue"),
        ([{**ok, "content_id": "KJV-MAT-5"}], "line 1: passage MAT.5 in KJV would be both 'KJV-MAT-5' and 'KJV:MAT.5'"),
    ]
    out = [(_jsonl(tmp_path / f"bad{i}.jsonl", rows), msg) for i, (rows, msg) in enumerate(cases)]
    pq.write_table(pa.table({"content_id": ["p1", "p2"], "content_type": ["passage", "passage"],
                             "series": ["JHN", "JHN"], "position": [1, -2]}), tmp_path / "bad.parquet")
    out.append((tmp_path / "bad.parquet", "row 2: position must be between 0"))
    pq.write_table(pa.table({"content_id": ["p1"], "content_type": ["passage"], "tags": [[None]]}),
                   tmp_path / "bad2.parquet")
    out.append((tmp_path / "bad2.parquet", "row 1: tags[1] must be a non-empty string"))
    return out


def test_bad_catalog_files_write_nothing(cli: CliRunner, tmp_path: Path, db_url: str) -> None:
    _import(cli, str(_jsonl(tmp_path / "base.jsonl", [_chapter("KJV", "MAT", 5)])))
    before = (_items(db_url), _embedded(db_url), _version(db_url))
    for path, message in _bad_catalog_files(tmp_path):
        res = cli.invoke(app, ["content", "import", str(path)])
        assert res.exit_code == 2, (path.name, message, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output
        assert message in " ".join(res.output.split()), (message, res.output)
    assert (_items(db_url), _embedded(db_url), _version(db_url)) == before
