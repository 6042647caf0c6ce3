"""``personalization bench serve`` runs end to end (tiny sizes) and prints the issue's fields."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from personalization.config import get_settings


def test_bench_serve_json(db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    from personalization.cli.main import app

    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    get_settings.cache_clear()
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "serve",
            "--json",
            "--users",
            "20",
            "--content",
            "200",
            "--requests",
            "100",
            "--duration",
            "0.5",
            "--concurrency",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    # stdout only: the in-process servers' warnings go to stderr, which `output` interleaves.
    out = orjson.loads(res.stdout.strip().splitlines()[-1])
    for field in (
        "http_preferences_p99_ms",
        "http_preferences_rps",
        "http_rerank100_p99_ms",
        "inprocess_preferences_p99_ms",
        "baseline_hgetall_p99_ms",
        "http_flag_p50_ms",
        "inprocess_rerank100_p50_ms",
        "inprocess_flag_rps",
    ):
        assert isinstance(out[field], float) and out[field] > 0, field
    assert out["dim"] == 384
