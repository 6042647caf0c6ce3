"""The demo's catalogue (translations, passages, series, tags) through the real ``content import``,
and its readers' translations; one book keeps it small."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from personalization.cli.main import app
from personalization.config import get_settings
from personalization_dev.demo.bible import TRANSLATIONS, Passage, embed_chapters, items_of, load_passages, tags_of
from personalization_dev.demo.runner import _write_content_file
from personalization_dev.demo.simulate import PREFERRED, make_world, simulate_events

DIM = 384


@pytest.fixture(scope="module")
def passages() -> list[Passage]:
    return load_passages(limit_books=1)  # Genesis: 50 chapters


def test_tags_are_derived_from_book_and_text() -> None:
    assert tags_of(19, "The LORD is my shepherd") == ("old_testament", "poetry", "psalms")
    assert "prayer" in tags_of(40, "pray pray and pray")
    assert "prayer" not in tags_of(40, "pray once")
    # A long chapter needs one word of the family per 400 words, not two in all.
    assert "prayer" not in tags_of(40, "pray pray " + "word " * 1200)
    assert tags_of(66, "")[:3] == ("new_testament", "prophecy", "apocalyptic")


def test_catalogue_imports_with_passages_and_translations(
    passages: list[Passage], tmp_path: Path, db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    chapters = items_of(passages)
    assert len(chapters) == 50 * len(TRANSLATIONS)
    vectors = embed_chapters(chapters, DIM)
    assert vectors.shape == (150, DIM) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The renderings of one passage are neighbours.
    kjv, web = vectors[:50], vectors[100:150]
    assert float(np.median((kjv * web).sum(axis=1))) > 0.8
    path = tmp_path / "catalog.parquet"
    _write_content_file(path, chapters, vectors)

    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["content", "import", str(path)])
    assert res.exit_code == 0, res.output
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT passage_id, translation, series, position, tags FROM content_items WHERE content_id = 'WEB:GEN.3'"
        ).fetchone()
        assert row is not None and row[:4] == ("GEN.3", "WEB", "GEN", 3) and {"old_testament", "law"} <= set(row[4])
        per_passage = conn.execute(
            "SELECT count(DISTINCT translation), count(*) FROM content_items GROUP BY passage_id"
        ).fetchall()
        assert set(per_passage) == {(len(TRANSLATIONS), len(TRANSLATIONS))}
        assert conn.execute("SELECT count(*) FROM content_embeddings WHERE dim = %s", (DIM,)).fetchone() == (150,)
        assert conn.execute("SELECT version FROM catalog_version").fetchone() == (1,)


def test_readers_prefer_translations_and_switch(passages: list[Passage]) -> None:
    world = make_world(passages, 40, seed=3)
    events = simulate_events(world, 14, seed=4)
    catalogue = {f"{tr}:{p.passage_id}" for tr in TRANSLATIONS for p in passages}
    assert events and all(e["content_id"] in catalogue for e in events)
    assert {r.profile["preferred_translation"] for r in world.readers} <= {t for t, _ in PREFERRED}
    usual = {str(r.user_id): r.usual_translation for r in world.readers}
    for r in world.readers:
        preferred = r.profile["preferred_translation"]
        assert r.usual_translation == preferred if preferred in TRANSLATIONS else r.usual_translation in TRANSLATIONS
    read_in = Counter(e["content_id"].split(":")[0] == usual[e["user_id"]] for e in events)
    # Mostly the usual translation, and some switching.
    assert read_in[True] > 3 * read_in[False] > 0
    for e in events:
        if "metadata" in e:
            assert e["metadata"]["translation"] == e["content_id"].split(":")[0]
