"""The demo's population: behaviour seeded, reader ids fresh per run."""

from __future__ import annotations

from personalization_dev.demo.bible import load_passages
from personalization_dev.demo.simulate import make_world


def test_fresh_reader_ids_per_run_with_the_same_seeded_behaviour() -> None:
    passages = load_passages(limit_books=2)  # Genesis and Exodus: 90 chapters
    a, b = make_world(passages, 30, seed=5, fresh_ids=True), make_world(passages, 30, seed=5, fresh_ids=True)
    assert not {r.user_id for r in a.readers} & {r.user_id for r in b.readers}
    assert [r.profile for r in a.readers] == [r.profile for r in b.readers]
    assert [r.traits for r in a.readers] == [r.traits for r in b.readers]
    seeded = [make_world(passages, 30, seed=5) for _ in range(2)]
    assert [r.user_id for r in seeded[0].readers] == [r.user_id for r in seeded[1].readers]
    assert [r.profile for r in seeded[0].readers] == [r.profile for r in a.readers]
