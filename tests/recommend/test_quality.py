"""Offline quality on simulated readers, through `personalization eval recommendations` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from personalization_dev import recsim


def _eval(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PERSONALIZATION_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "personalization.cli", "eval", "recommendations", *args],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def quality_db(db_url: str) -> str:
    # Readers who drift and work through books; small enough for the default suite.
    data = recsim.simulate(books=16, chapters=15, devotionals=40, readers=200, days=21, seed=11)
    with psycopg.connect(db_url) as conn:
        recsim.write(conn, data)
    return db_url


def test_blend_beats_popularity_and_implicit(quality_db: str) -> None:
    r = _eval(quality_db, "--holdout-days", "5", "--k", "10", "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    m = out["methods"]
    ours = m["recommender"]["ndcg"]
    assert out["test_readers"] > 50
    assert ours >= 2.0 * m["popularity"]["ndcg"], m
    assert ours >= max(m[n]["ndcg"] for n in ("implicit_als", "implicit_bpr", "implicit_item_cosine")), m
    # The blend beats each of its sources alone.
    assert ours >= max(v["ndcg"] for k, v in m.items() if k.startswith("only_")), m
    assert 0 < m["recommender"]["recall"] <= 1 and 0 < m["recommender"]["coverage"] <= 1
    assert out["goals"] == {"beats_implicit": True, "twice_popularity": True}


def test_bad_input_exits_2_with_one_line(db_url: str) -> None:
    for args in (("--holdout-days", "3", "--holdout-fraction", "0.2"), ("--holdout-fraction", "1.5"),
                 ("--k", "0")):
        r = _eval(db_url, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr
    # An empty database has nothing to evaluate: bad input too, nothing written.
    r = _eval(db_url, "--holdout-days", "3")
    assert r.returncode == 2 and "error: " in r.stderr
