"""The catalogue as the recommender sees it (pure: no I/O).

The unit of recommendation is the *passage*: ``content_items.passage_id`` when set (every
translation of a chapter shares it), else the content id itself (devotionals, plan days).
Signals on any translation count for the passage; a list shows one translation of it,
chosen per reader by :meth:`Catalog.pick_translation`.

A passage's vector is the normalised mean of its translations' unit embeddings, so one
index entry stands for all of them and a search can never return two translations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from personalization.core import embedding as emb

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One content item with what ranking needs (embedding optional)."""

    content_id: str
    content_type: str | None
    title: str | None = None
    passage_id: str | None = None
    translation: str | None = None
    series: str | None = None
    position: int | None = None
    tags: tuple[str, ...] = ()
    embedding: bytes | None = None


def tag_key(tag: str) -> str:
    """Tags and trait values are matched case- and space-insensitively."""
    return " ".join(tag.lower().split())


@dataclass
class Catalog:
    """Content items grouped into passages, series and tags, with the passages' unit vectors."""

    content_ids: list[str]
    content_type: list[str | None]
    title: list[str | None]
    translation: list[str | None]
    passage_of: I32  # content index -> passage index
    passages: list[str]
    passage_contents: list[list[int]]
    passage_series: list[str | None]
    passage_position: list[int | None]
    passage_type: list[str | None]
    series_passages: dict[str, I32]  # series -> passage indices in position order
    series_positions: dict[str, npt.NDArray[np.int64]]
    tag_passages: dict[str, I32]
    vectors: F32  # passages x dim, unit rows; zero rows for passages without an embedding
    has_vector: npt.NDArray[np.bool_]
    content_index: dict[str, int] = field(default_factory=dict)
    passage_index: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of passages."""
        return len(self.passages)

    def passage_of_content(self, content_id: str) -> int | None:
        """The passage index of a content id (None when not in the catalogue)."""
        i = self.content_index.get(content_id)
        return None if i is None else int(self.passage_of[i])

    def pick_translation(self, passage: int, preferences: Sequence[str]) -> int:
        """The content index to show for ``passage``: the first preferred translation it has.

        Without a match, a stable choice: the first by content id (the catalogue is loaded
        in content id order).
        """
        members = self.passage_contents[passage]
        if len(members) == 1 or not preferences:
            return members[0]
        for t in preferences:
            for c in members:
                if self.translation[c] == t:
                    return c
        return members[0]

    def label(self, passage: int) -> str:
        """A content id naming the passage in reasons (its first translation)."""
        return self.content_ids[self.passage_contents[passage][0]]


# A little over 80 lines, on purpose: one pass over the rows fills every index of the catalogue
# (passages, translations, series order, tags, vectors) together.
def build_catalog(rows: Iterable[CatalogRow], dim: int) -> Catalog:
    """Group rows into passages; rows must come ordered by content id (stable choices)."""
    content_ids: list[str] = []
    ctype: list[str | None] = []
    title: list[str | None] = []
    translation: list[str | None] = []
    passage_of: list[int] = []
    passages: list[str] = []
    passage_index: dict[str, int] = {}
    members: list[list[int]] = []
    p_series: list[str | None] = []
    p_pos: list[int | None] = []
    p_type: list[str | None] = []
    sums: list[npt.NDArray[np.float64] | None] = []
    tags: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        c = len(content_ids)
        content_ids.append(row.content_id)
        ctype.append(row.content_type)
        title.append(row.title)
        translation.append(row.translation)
        key = row.passage_id or row.content_id
        p = passage_index.get(key)
        if p is None:
            p = len(passages)
            passage_index[key] = p
            passages.append(key)
            members.append([])
            p_series.append(row.series)
            p_pos.append(row.position)
            p_type.append(row.content_type)
            sums.append(None)
        members[p].append(c)
        passage_of.append(p)
        if p_series[p] is None and row.series is not None:
            p_series[p], p_pos[p] = row.series, row.position
        if p_type[p] is None:
            p_type[p] = row.content_type
        for t in row.tags:
            tags[tag_key(t)].add(p)
        if row.embedding is not None and len(row.embedding) == 4 * dim:
            try:
                vec = emb.normalize(emb.check(emb.decode(row.embedding, dim), dim)).astype(np.float64)
            except emb.EmbeddingError:
                continue  # not written by the importer: treated as missing
            prev = sums[p]
            sums[p] = vec if prev is None else prev + vec
    vectors = np.zeros((len(passages), dim), dtype=np.float32)
    for p, total in enumerate(sums):
        if total is not None:
            vectors[p] = total
    vectors = emb.normalize_rows(vectors)
    has_vector = np.array([total is not None for total in sums], dtype=bool)
    by_series: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p, name in enumerate(p_series):
        if name is not None:
            pos = p_pos[p]
            by_series[name].append((pos if pos is not None else 0, p))
    series_passages: dict[str, I32] = {}
    series_positions: dict[str, npt.NDArray[np.int64]] = {}
    for name, lst in by_series.items():
        lst.sort()
        series_positions[name] = np.array([pos for pos, _ in lst], dtype=np.int64)
        series_passages[name] = np.array([p for _, p in lst], dtype=np.int32)
    return Catalog(
        content_ids=content_ids,
        content_type=ctype,
        title=title,
        translation=translation,
        passage_of=np.array(passage_of, dtype=np.int32),
        passages=passages,
        passage_contents=members,
        passage_series=p_series,
        passage_position=p_pos,
        passage_type=p_type,
        series_passages=series_passages,
        series_positions=series_positions,
        tag_passages={t: np.array(sorted(ps), dtype=np.int32) for t, ps in tags.items()},
        vectors=vectors,
        has_vector=has_vector,
        content_index={c: i for i, c in enumerate(content_ids)},
        passage_index=passage_index,
    )
