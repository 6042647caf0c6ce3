"""``personalization content import``: jsonl, parquet and npy; bad files write nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from serving_helpers import DIM, make_user, unit
from typer.testing import CliRunner

from personalization.cache import keys
from personalization.cli.main import app
from personalization.composition import Platform
from personalization.config import get_settings
from personalization.core import embedding as emb
from personalization.serving.content_import import ContentBatch, import_batch
from personalization.serving.service import Candidate, RerankIn


@pytest.fixture
def cli(db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    get_settings.cache_clear()
    return CliRunner()


def _rows(db_url: str) -> list[tuple[str, str, int, bytes]]:
    with psycopg.connect(db_url) as conn:
        return [
            (r[0], r[1], r[2], bytes(r[3]))
            for r in conn.execute(
                "SELECT content_id, model, dim, embedding FROM content_embeddings ORDER BY content_id"
            )
        ]


def test_three_formats(cli: CliRunner, tmp_path: Path, db_url: str, redis_url: str) -> None:
    jl = tmp_path / "a.jsonl"
    jl.write_bytes(
        b"\n".join(
            orjson.dumps(
                {
                    "content_id": f"j{i}",
                    "embedding": (unit(i) * 5).tolist(),
                    "content_type": "devotional",
                    "title": f"T{i}",
                }
            )
            for i in range(3)
        )
    )
    res = cli.invoke(app, ["content", "import", str(jl), "--model", "minilm"])
    assert res.exit_code == 0, res.output
    assert "imported 3" in res.output

    table = pa.table({"content_id": ["p0", "p1"], "embedding": [unit(10).tolist(), unit(11).tolist()]})
    pq.write_table(table, tmp_path / "b.parquet")
    res = cli.invoke(app, ["content", "import", str(tmp_path / "b.parquet"), "--json"])
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.output.strip().splitlines()[-1])["imported"] == 2

    np.save(tmp_path / "c.npy", np.stack([unit(20), unit(21)]).astype(np.float64))
    (tmp_path / "c.ids").write_text("n0\nn1\n")
    res = cli.invoke(app, ["content", "import", str(tmp_path / "c.npy"), "--ids", str(tmp_path / "c.ids")])
    assert res.exit_code == 0, res.output

    rows = {r[0]: r for r in _rows(db_url)}
    assert sorted(rows) == ["j0", "j1", "j2", "n0", "n1", "p0", "p1"]
    assert rows["j1"][1] == "minilm" and rows["j1"][2] == DIM
    # Stored unit length (the jsonl vectors were scaled by 5).
    assert np.allclose(emb.decode(rows["j1"][3], DIM), unit(1), atol=1e-6)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM content_items WHERE content_type = 'devotional'").fetchone() == (3,)
    with redis.Redis.from_url(redis_url) as r:
        assert r.get(keys.content_embeddings_version()) == b"3"


def _bad_files(tmp_path: Path) -> list[tuple[list[str], str]]:
    good = unit(1).tolist()
    cases: list[tuple[list[str], str]] = []
    f = tmp_path / "dim.jsonl"
    f.write_bytes(
        orjson.dumps({"content_id": "a", "embedding": good})
        + b"\n"
        + orjson.dumps({"content_id": "b", "embedding": good[:10]})
    )
    cases.append(([str(f)], "line 2: embedding has 10 values, expected 384"))
    f = tmp_path / "nan.npy"
    bad = np.stack([unit(1), unit(2)])
    bad[1, 3] = np.nan
    np.save(f, bad)
    (tmp_path / "nan.ids").write_text("a\nb\n")
    cases.append(([str(f), "--ids", str(tmp_path / "nan.ids")], "row 2: embedding contains NaN"))
    f = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"content_id": ["a", "a"], "embedding": [good, good]}), f)
    cases.append(([str(f)], "duplicate content_id 'a'"))
    cases.append(([str(tmp_path / "nan.npy")], "needs --ids"))
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    cases.append(([str(f)], "has no rows"))
    f = tmp_path / "zero.jsonl"
    f.write_bytes(orjson.dumps({"content_id": "z", "embedding": [0.0] * DIM}))
    cases.append(([str(f)], "all zeros"))
    f = tmp_path / "noid.jsonl"
    f.write_bytes(orjson.dumps({"embedding": good}))
    cases.append(([str(f)], "content_id is required"))
    cases.append(([str(tmp_path / "missing.jsonl")], "does not exist"))
    f = tmp_path / "x.csv"
    f.write_text("a,b")
    cases.append(([str(f)], "use .jsonl, .parquet or .npy"))
    return cases


def test_bad_files_write_nothing(cli: CliRunner, tmp_path: Path, db_url: str, redis_url: str) -> None:
    for args, message in _bad_files(tmp_path):
        res = cli.invoke(app, ["content", "import", *args])
        assert res.exit_code == 2, (args, res.output)
        out = " ".join(res.output.split())
        assert message in out, (message, res.output)
    assert _rows(db_url) == []
    with redis.Redis.from_url(redis_url) as r:
        assert r.get(keys.content_embeddings_version()) is None


async def test_import_reaches_running_rerank(platform: Platform, client: httpx.AsyncClient) -> None:
    """A serving process drops its in-process content vectors when an import bumps the version."""
    uid = await make_user(client)
    user_vec = unit(99)
    await platform.redis.set(keys.user_embedding(uid), emb.encode(user_vec))

    async def load(a: np.ndarray, b: np.ndarray) -> None:
        batch = ContentBatch.of_embeddings(["a", "b"], np.stack([a, b]))
        await import_batch(platform.db, platform.serving.cache, batch, "m")

    body = RerankIn(session_id=uuid.uuid4(), candidates=[Candidate(content_id="a"), Candidate(content_id="b")])
    await load(user_vec, -user_vec)
    assert [i.content_id for i in (await platform.serving.rerank(uid, body)).items] == ["a", "b"]
    await load(-user_vec, user_vec)
    assert [i.content_id for i in (await platform.serving.rerank(uid, body)).items] == ["b", "a"]
