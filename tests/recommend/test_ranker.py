"""The ranker and the pure pieces around it: blending, exclusions, diversity caps, translations."""

from __future__ import annotations

import numpy as np

from personalization.core import embedding as emb
from personalization.core.decay import DEFAULT_DECAY
from personalization.recommend.catalog import Catalog, CatalogRow, build_catalog
from personalization.recommend.engine import profile_traits, trait_values
from personalization.recommend.history import HistoryEvent, fold_history
from personalization.recommend.ranker import RankPolicy, rank
from personalization.recommend.sources.base import Candidate

DIM = 8


def _catalog() -> Catalog:
    rng = np.random.default_rng(1)
    rows = []
    for book in ("GEN", "EXO"):
        for pos in range(1, 6):
            for tr in ("KJV", "WEB"):
                vec = emb.normalize(rng.standard_normal(DIM).astype(np.float32))
                rows.append(CatalogRow(f"{tr}:{book}.{pos}", "chapter", None, f"{book}.{pos}", tr, book, pos,
                                       ("Hope",), emb.encode(vec)))
    rows.append(CatalogRow("dev-1", "devotional", None, tags=("peace",)))
    return build_catalog(sorted(rows, key=lambda r: r.content_id), DIM)


POLICY = RankPolicy(weights={"continue": 1.0, "similar": 1.0, "trending": 0.5}, max_per_series=2,
                    max_source_share=1.0)


def test_passages_translations_and_series() -> None:
    cat = _catalog()
    assert cat.size == 11 and len(cat.content_ids) == 21
    p = cat.passage_of_content("WEB:GEN.3")
    assert p == cat.passage_of_content("KJV:GEN.3")
    assert cat.content_ids[cat.pick_translation(p, ["WEB"])] == "WEB:GEN.3"
    assert cat.content_ids[cat.pick_translation(p, ["NIV", "KJV"])] == "KJV:GEN.3"
    assert [cat.passages[q] for q in cat.series_passages["EXO"]] == [f"EXO.{i}" for i in range(1, 6)]
    assert not cat.has_vector[cat.passage_index["dev-1"]]
    assert set(cat.tag_passages) == {"hope", "peace"}


def test_blend_caps_and_exclusions() -> None:
    cat = _catalog()
    gen = [cat.passage_index[f"GEN.{i}"] for i in range(1, 6)]
    exo1 = cat.passage_index["EXO.1"]
    by_source = {
        "continue": [Candidate(gen[0], 1.0, "continue"), Candidate(gen[1], 0.8, "continue")],
        "similar": [Candidate(gen[1], 2.0, "similar_to:KJV:EXO.2"), Candidate(gen[2], 1.0, "similar_to:x"),
                    Candidate(gen[3], 0.9, "similar_to:x"), Candidate(exo1, 0.5, "similar_to:x")],
        "trending": [Candidate(gen[4], 10.0, "trending"), Candidate(gen[0], 5.0, "trending")],
    }
    items = rank(by_source, POLICY, cat, 4, excluded={gen[2]}, translations=["WEB"])
    ids = [it.content_id for it in items]
    # Agreement lifts GEN.2 (continue + similar) to the top; reasons strongest first.
    assert ids[0] == "WEB:GEN.2" and items[0].reasons == ["similar_to:KJV:EXO.2", "continue"]
    assert "WEB:GEN.3" not in ids  # excluded
    # At most two of GEN within the caps, EXO.1 next; the best capped item fills the list at the end.
    assert ids == ["WEB:GEN.2", "WEB:GEN.1", "WEB:EXO.1", "WEB:GEN.5"]


def test_history_fold() -> None:
    cat = _catalog()
    now = 1_000_000.0
    h = fold_history([
        HistoryEvent("KJV:GEN.2", "read", 1.0, now - 100),
        HistoryEvent("WEB:GEN.3", "read", 1.0, now - 50),
        HistoryEvent("KJV:EXO.1", "skip", 1.0, now - 10),
        HistoryEvent("gone", "read", 1.0, now),
    ], cat, DEFAULT_DECAY, now, consumed_types=("read",), skip_types=("skip",))
    assert h.series_progress["GEN"][0] == 3
    assert h.recent_positive[0][1] == "WEB:GEN.3"
    assert h.skipped == {cat.passage_index["EXO.1"]} and h.unknown_content == {"gone"}
    assert h.translation_order()[0] in ("KJV", "WEB") and len(h.consumed) == 2


def test_trait_values() -> None:
    assert trait_values(["Peace", {"a": "hope"}, 3, None, True]) == ["Peace", "hope", "3"]
    out = profile_traits({"spiritual_goal": "peace", "denomination": None}, [("topics", ["grief"], 0.9)])
    assert out == [("spiritual_goal", ["peace"], 1.0), ("topics", ["grief"], 0.9)]
