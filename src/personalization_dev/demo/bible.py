"""The Bible as a catalogue: one passage per chapter, one content item per passage and translation.

The text comes from the ``pythonbible`` packages (no network): the King James Version,
the American Standard Version and the World English Bible, all in the public domain.
A chapter is the passage ``JHN.3`` (USFM book code and chapter, as in OSIS references);
its items are ``KJV:JHN.3``, ``ASV:JHN.3`` and ``WEB:JHN.3``.  The series is the book
(``JHN``) and the position the chapter number, so "continue reading" is the next
chapter of the book.

Tags are derived, not invented: the testament, the book's genre (law, history, wisdom,
poetry, psalms, prophecy, gospel, letters, apocalyptic) and themes found in the text
(a chapter is tagged ``prayer`` when words of the pray- family occur in its KJV text
at least twice, and at least once per 400 words in a long chapter, and likewise for
the other word families of :data:`THEMES`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# USFM book codes of the 66 books of the Protestant canon, in pythonbible's Book order (1..66).
USFM = (
    "GEN", "EXO", "LEV", "NUM", "DEU", "JOS", "JDG", "RUT", "1SA", "2SA", "1KI", "2KI", "1CH", "2CH",
    "EZR", "NEH", "EST", "JOB", "PSA", "PRO", "ECC", "SNG", "ISA", "JER", "LAM", "EZK", "DAN", "HOS",
    "JOL", "AMO", "OBA", "JON", "MIC", "NAM", "HAB", "ZEP", "HAG", "ZEC", "MAL", "MAT", "MRK", "LUK",
    "JHN", "ACT", "ROM", "1CO", "2CO", "GAL", "EPH", "PHP", "COL", "1TH", "2TH", "1TI", "2TI", "TIT",
    "PHM", "HEB", "JAS", "1PE", "2PE", "1JN", "2JN", "3JN", "JUD", "REV",
)

# The translations the demo imports: code -> pythonbible Version member name.
TRANSLATIONS: dict[str, str] = {"KJV": "KING_JAMES", "ASV": "AMERICAN_STANDARD", "WEB": "WORLD_ENGLISH"}
# The one whose text the theme tags are read from (tags describe the passage, not a rendering).
TAG_SOURCE = "KJV"

# Topic groups used by the simulation (readers have affinities over these).
TOPICS: dict[str, tuple[int, int]] = {
    "law": (1, 5),
    "history": (6, 17),
    "wisdom": (18, 22),
    "major_prophets": (23, 27),
    "minor_prophets": (28, 39),
    "gospels": (40, 43),
    "acts_paul": (44, 57),
    "epistles_revelation": (58, 66),
}

# Genre tags by book number (a book may have several).
_GENRES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("law", tuple(range(1, 6))),
    ("history", (*range(6, 18), 44)),
    ("wisdom", (18, 20, 21)),
    ("poetry", (18, 19, 22, 25)),
    ("psalms", (19,)),
    ("prophecy", (*range(23, 25), *range(26, 40), 66)),
    ("gospel", tuple(range(40, 44))),
    ("letters", tuple(range(45, 66))),
    ("apocalyptic", (27, 66)),
)

# Theme tags: the word family of each theme (each alternative starts at a word boundary).
THEMES: dict[str, str] = {
    "prayer": r"pray\w*|supplications?\b|intercession\b",
    "comfort": r"comfort\w*|fear (?:not|no)\b|peace\b|refuge\b",
    "love": r"lov(?:e|ed|est|eth|ing)\b|charity\b|beloved\b",
    "faith": r"faith\w*|believ\w*",
    "praise": r"prais\w*|sing\b|sang\b|song\w*|rejoic\w*",
    "wisdom": r"wis(?:dom|e|ely)\b|understanding\b|knowledge\b|instruction\b",
    "mercy": r"merc(?:y|iful|ies)\b|forg[ia]v\w*|compassion\b",
    "hope": r"hope\w*|promise\w*",
}
# One pass per chapter: every family is a named group of one pattern, run on lower case text.
_THEME_RE = re.compile(r"\b(?:" + "|".join(f"(?P<{name}>{pattern})" for name, pattern in THEMES.items()) + ")")
# A theme needs at least two of its words, and one per this many words of the chapter.
_THEME_WORDS_PER_HIT = 400


@dataclass(frozen=True)
class Passage:
    """One chapter in every imported translation."""

    passage_id: str
    book: str
    chapter: int
    title: str
    topic: str
    tags: tuple[str, ...]
    texts: dict[str, str]  # translation -> text


@dataclass(frozen=True)
class Chapter:
    """One content item: a passage in one translation."""

    content_id: str
    passage_id: str
    translation: str
    series: str
    position: int
    title: str
    topic: str
    tags: tuple[str, ...]
    text: str


def topic_of(book_number: int) -> str:
    """The topic group of a book (1..66)."""
    for name, (lo, hi) in TOPICS.items():
        if lo <= book_number <= hi:
            return name
    raise ValueError(f"book {book_number} is outside the 66-book canon")


def tags_of(book_number: int, text: str) -> tuple[str, ...]:
    """Testament, genres of the book and themes found in ``text``."""
    tags = ["old_testament" if book_number <= 39 else "new_testament"]
    tags.extend(genre for genre, books in _GENRES if book_number in books)
    least = max(2, -(-len(text.split()) // _THEME_WORDS_PER_HIT))
    hits = Counter(m.lastgroup for m in _THEME_RE.finditer(text.lower()))
    tags.extend(name for name in THEMES if hits[name] >= least)
    return tuple(tags)


def load_passages(translations: Sequence[str] = tuple(TRANSLATIONS), limit_books: int | None = None) -> list[Passage]:
    """Every chapter (1,189) in each translation, from the pythonbible packages (no network).

    A verse a translation leaves out (the World English Bible omits a few that later
    manuscripts add) is left out of that translation's chapter text.
    """
    try:
        import pythonbible as bible
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the demo needs pythonbible and its translations: pip install -e '.[all]'") from exc
    texts_of = {code: bible.get_bible(bible.Version[TRANSLATIONS[code]], "plain_text_readers") for code in translations}
    books = [b for b in bible.Book if 1 <= b.value <= 66]
    if limit_books is not None:
        books = books[:limit_books]
    out: list[Passage] = []
    for book in books:
        code = USFM[book.value - 1]
        for ch in range(1, bible.get_number_of_chapters(book) + 1):
            verse_ids = [bible.get_verse_id(book, ch, v) for v in range(1, bible.get_number_of_verses(book, ch) + 1)]
            texts: dict[str, str] = {}
            for tr, text in texts_of.items():
                # One slice per chapter, from its first to its last verse this translation has.
                present = [v for v in verse_ids if text.is_valid_verse_id(v)]
                texts[tr] = " ".join(text.get_scripture(present[0], present[-1]).split()) if present else ""
            tag_text = texts.get(TAG_SOURCE) or next(iter(texts.values()))
            out.append(Passage(
                f"{code}.{ch}", code, ch, f"{book.title} {ch}", topic_of(book.value),
                tags_of(book.value, tag_text), texts,
            ))
    return out


def items_of(passages: Sequence[Passage]) -> list[Chapter]:
    """The content items: every passage in every translation, translation by translation."""
    translations = list(passages[0].texts) if passages else []
    return [
        Chapter(f"{tr}:{p.passage_id}", p.passage_id, tr, p.book, p.chapter, p.title, p.topic, p.tags, p.texts[tr])
        for tr in translations
        for p in passages
    ]


def embed_chapters(chapters: Sequence[Chapter], dim: int, seed: int = 7) -> npt.NDArray[np.float32]:
    """TF-IDF over the item texts, reduced to ``dim`` dimensions by truncated SVD; unit rows (float32).

    All translations share one vocabulary and one projection, so the renderings of a
    passage land close together (their median cosine is about 0.97, against about 0.1
    for two random chapters).  The projection is fitted on one translation's chapters
    (:data:`TAG_SOURCE` when imported) and applied to all: a third of the time of
    fitting on every item, with the same neighbours (about 80 % of a chapter's ten
    nearest chapters share its topic group either way).
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from threadpoolctl import threadpool_limits

    # The 6,000 most frequent terms of about 13,000: the SVD takes less than half the time
    # and the neighbours hold (measured on the whole canon).
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, max_df=0.5, stop_words="english", max_features=6000)
    x = tfidf.fit_transform([c.text for c in chapters])
    fit_rows = [i for i, c in enumerate(chapters) if c.translation == TAG_SOURCE] or list(range(len(chapters)))
    k = min(dim, x.shape[1] - 1, len(fit_rows) - 1)
    # One BLAS thread: the demo computes this while the relay's JVM and the API start,
    # and BLAS threads that spin for a busy core made it 2-4 times slower (measured).
    # Two power iterations instead of five: the neighbours hold, in less time.
    with threadpool_limits(limits=1):
        svd = TruncatedSVD(n_components=k, n_iter=2, random_state=seed).fit(x[fit_rows])
        z = svd.transform(x)
    if k < dim:  # keep the configured dimension even for a tiny corpus
        z = np.hstack([z, np.zeros((z.shape[0], dim - k))])
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: npt.NDArray[np.float32] = (z / norms).astype(np.float32)
    return out
