"""The settings tree (config.Settings): every variable the docs name maps to one setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from personalization.config import Settings, describe_error, env_names

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "configuration.md", ROOT / "deploy" / "kafka-connect" / "README.md"]
# Read by the development tooling (personalization_dev), not by the product's settings.
DEV_TOOLING = {"PERSONALIZATION_STACK_DIR"}
FULL = re.compile(r"\bPERSONALIZATION_[A-Z0-9_]*[A-Z0-9]")
SHORT = re.compile(r"`(_[A-Z0-9_]+)`")


def _documented() -> set[str]:
    """Full names, and the README's ``_SUFFIX`` shorthand resolved against the name before it."""
    known = set(env_names())
    found: set[str] = set()
    for doc in DOCS:
        last = ""
        for line in doc.read_text().splitlines():
            for m in re.finditer(f"{FULL.pattern}|{SHORT.pattern}", line):
                if m.group(0).startswith("PERSONALIZATION_"):
                    last = m.group(0)
                    found.add(last)
                    continue
                suffix = m.group(1)
                stems = [last[:i] for i in range(len(last), 0, -1) if last[i - 1:i] == "_" or i == len(last)]
                found.add(next((s.rstrip("_") + suffix for s in stems if s.rstrip("_") + suffix in known),
                               f"<unresolved {suffix} after {last}>"))
    return found


def test_every_documented_variable_maps_to_a_setting() -> None:
    names = env_names()
    documented = _documented()
    assert len(documented) > 40
    dev_source = "\n".join(p.read_text() for p in (ROOT / "src" / "personalization_dev").rglob("*.py"))
    for var in sorted(documented):
        if var in DEV_TOOLING:
            assert var in dev_source, var
            continue
        assert var in names, f"{var} is documented but no setting reads it"


def test_variables_are_unique_and_cover_every_field() -> None:
    fields = sum(len(type(section).model_fields) for section in Settings().__dict__.values())
    assert len(env_names()) == fields


@pytest.mark.parametrize(("var", "value", "path", "expected"), [
    ("PERSONALIZATION_DATABASE_URL", "postgresql://u@h:1/d", "database.url", "postgresql://u@h:1/d"),
    ("PERSONALIZATION_DB_STATEMENT_TIMEOUT_MS", "1234", "database.statement_timeout_ms", 1234),
    ("PERSONALIZATION_CDC_SLOT_NAME", "other_slot", "cdc.slot_name", "other_slot"),
    ("PERSONALIZATION_LEARNER_BATCH_MAX", "7", "learner.batch_max", 7),
    ("PERSONALIZATION_NIGHTLY_CRON", "5 4 * * *", "nightly.cron", "5 4 * * *"),
    ("PERSONALIZATION_EMBEDDING_DIM", "64", "embedding.dim", 64),
    ("PERSONALIZATION_MAX_BODY_BYTES", "2048", "http.max_body_bytes", 2048),
    ("PERSONALIZATION_RERANK_ALPHA", "0.25", "serving.rerank_alpha", 0.25),
    ("PERSONALIZATION_VIEW_SIGNAL_TYPES", '["read"]', "ingest.view_signal_types", ("read",)),
    ("PERSONALIZATION_PLATFORM_ROLES", "api, learner", "platform.roles", ("api", "learner")),
    ("PERSONALIZATION_DATA_DIR", "/srv/personalization", "platform.data_dir", Path("/srv/personalization")),
    ("PERSONALIZATION_RECOMMEND_REFRESH_S", "0.5", "recommend.refresh_s", 0.5),
    ("PERSONALIZATION_RECOMMEND_CONSUMED_SIGNAL_TYPES", '["read"]', "recommend.consumed_signal_types", ("read",)),
])
def test_flat_variables_reach_their_section(monkeypatch: pytest.MonkeyPatch, var: str, value: str, path: str,
                                            expected: object) -> None:
    monkeypatch.setenv(var, value)
    section, field = path.split(".")
    assert getattr(getattr(Settings(), section), field) == expected
    assert env_names()[var] == path


def test_learner_signals_become_the_shared_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONALIZATION_LEARNER_SIGNALS", '{"skip": {"scale": -2, "half_life_s": 60}}')
    monkeypatch.setenv("PERSONALIZATION_LEARNER_EMBEDDING_HALF_LIFE_S", "3600")
    cfg = Settings().decay.config()
    assert (cfg.for_signal("skip").scale, cfg.for_signal("skip").half_life_s) == (-2.0, 60.0)
    assert cfg.for_signal("read").scale == 1.0 and cfg.embedding_half_life_s == 3600.0


def test_constructor_values_merge_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONALIZATION_DB_POOL_MAX", "3")
    s = Settings(database={"url": "postgresql://x@y/z"})
    assert (s.database.url, s.database.pool_max) == ("postgresql://x@y/z", 3)
    assert s.replace(cdc={"slot_name": "abc"}).cdc.slot_name == "abc"
    assert s.replace(cdc={"slot_name": "abc"}).database.pool_max == 3


def test_bad_values_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONALIZATION_CDC_SLOT_NAME", "Not-Valid")
    with pytest.raises(ValidationError) as exc:
        Settings()
    assert describe_error(exc.value).startswith("PERSONALIZATION_CDC_SLOT_NAME: String should match")
    with pytest.raises(ValidationError):
        Settings(databse={"url": "typo"})  # a misspelt section is refused, not ignored
