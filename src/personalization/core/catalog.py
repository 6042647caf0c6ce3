"""The content catalogue's fields and their rules (pure: no I/O).

A catalogue row describes one content item (``content_items``): its type, title and
text, and what recommendations need: the canonical passage it renders (OSIS, e.g.
``JHN.3``), the translation it is in (``KJV``), the series it belongs to (a book or
a reading plan) with its position there, and tags.  Every translation of a chapter
is its own item sharing one ``passage_id``: signals on any translation count for
the passage, and a list of recommendations holds at most one translation of it.

The length limits are those of the CHECK constraints of the
``0600_content_catalog`` migration (and a few more for the free-text fields), so a
row that passes :func:`parse_fields` is one PostgreSQL accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson

MAX_CONTENT_ID = 256
MAX_CONTENT_TYPE = 256
MAX_TITLE = 1024
# A chapter's whole text fits (Psalm 119, the longest, has about 25,000 characters).
MAX_BODY = 100_000
MAX_PASSAGE_ID = 256
MAX_TRANSLATION = 64
MAX_SERIES = 256
MAX_POSITION = 2**31 - 1  # INTEGER
MAX_TAGS = 64
MAX_TAG = 64
MAX_METADATA_BYTES = 16_384
MAX_MODEL = 256

# Every field a catalogue row may carry besides content_id (the names are the columns).
CATALOG_FIELDS = (
    "content_type", "title", "body", "passage_id", "translation", "series", "position", "tags", "metadata",
)


class CatalogError(ValueError):
    """A catalogue value that breaks a rule; ``field`` names the field."""

    def __init__(self, field: str, msg: str) -> None:
        self.field = field
        super().__init__(msg)


@dataclass(frozen=True, slots=True)
class CatalogFields:
    """The catalogue values of one row; None means "not given" (the stored value stays)."""

    content_type: str | None = None
    title: str | None = None
    body: str | None = None
    passage_id: str | None = None
    translation: str | None = None
    series: str | None = None
    position: int | None = None
    tags: tuple[str, ...] | None = None
    metadata: dict[str, Any] | None = None

    def given(self) -> bool:
        """Whether the row carries any catalogue value at all."""
        return any(getattr(self, f.name) is not None for f in fields(self))


NO_FIELDS = CatalogFields()


def text(value: Any, name: str, where: str, max_len: int) -> str | None:
    """A non-blank string of at most ``max_len`` characters without NUL (None passes through)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(name, f"{where}: {name} must be a non-empty string")
    if len(value) > max_len:
        raise CatalogError(name, f"{where}: {name} is longer than {max_len} characters")
    # PostgreSQL's TEXT cannot hold NUL.
    if "\x00" in value:
        raise CatalogError(name, f"{where}: {name} contains a NUL character")
    return value


def _identifier(value: Any, name: str, where: str, max_len: int) -> str | None:
    out = text(value, name, where, max_len)
    # Identifiers are matched exactly (a profile's preferred_translation, a passage's
    # translations): surrounding white space is a mistake in the file, not a new value.
    if out is not None and out != out.strip():
        raise CatalogError(name, f"{where}: {name} {out!r} has leading or trailing white space")
    return out


def _position(value: Any, where: str) -> int | None:
    if value is None:
        return None
    # Whole floats pass: a dataframe writes an integer column with gaps as floats.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError("position", f"{where}: position must be a whole number")
    if not 0 <= value <= MAX_POSITION:
        raise CatalogError("position", f"{where}: position must be between 0 and {MAX_POSITION}")
    return value


def _tags(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise CatalogError("tags", f"{where}: tags must be a list of strings")
    if len(value) > MAX_TAGS:
        raise CatalogError("tags", f"{where}: tags has {len(value)} entries, at most {MAX_TAGS} allowed")
    out: list[str] = []
    for n, tag in enumerate(value, 1):
        t = _identifier(tag, f"tags[{n}]", where, MAX_TAG)
        if t is None:
            raise CatalogError("tags", f"{where}: tags[{n}] must be a non-empty string")
        if t not in out:  # a repeated tag says nothing more
            out.append(t)
    return tuple(out)


def _metadata(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):  # columnar files carry it as JSON text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise CatalogError("metadata", f"{where}: metadata is not valid JSON") from None
    if not isinstance(value, dict):
        raise CatalogError("metadata", f"{where}: metadata must be a JSON object")
    try:
        size = len(orjson.dumps(value))
    except TypeError:
        raise CatalogError("metadata", f"{where}: metadata must be a JSON object") from None
    if size > MAX_METADATA_BYTES:
        raise CatalogError("metadata", f"{where}: metadata is {size} bytes, at most {MAX_METADATA_BYTES} allowed")
    if _has_nul(value):  # JSONB cannot hold NUL either
        raise CatalogError("metadata", f"{where}: metadata contains a NUL character")
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse_fields(row: Mapping[str, Any] | Callable[[str], Any], where: str) -> CatalogFields:
    """Validate the catalogue values of one row (a mapping, or a getter by field name).

    ``where`` names the row in messages (``"line 3"``, ``"row 3"``).  Raises
    :class:`CatalogError` naming the first bad field.
    """
    get = row.get if isinstance(row, Mapping) else row
    out = CatalogFields(
        content_type=_identifier(get("content_type"), "content_type", where, MAX_CONTENT_TYPE),
        title=text(get("title"), "title", where, MAX_TITLE),
        body=text(get("body"), "body", where, MAX_BODY),
        passage_id=_identifier(get("passage_id"), "passage_id", where, MAX_PASSAGE_ID),
        translation=_identifier(get("translation"), "translation", where, MAX_TRANSLATION),
        series=_identifier(get("series"), "series", where, MAX_SERIES),
        position=_position(get("position"), where),
        tags=_tags(get("tags"), where),
        metadata=_metadata(get("metadata"), where),
    )
    if out.position is not None and out.series is None:
        raise CatalogError("position", f"{where}: position is the order within a series: give series too")
    return out


class TranslationIndex:
    """Catches two items of one file claiming the same passage in the same translation."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}

    def add(self, content_id: str, f: CatalogFields, where: str) -> None:
        """Record a row; CatalogError if an earlier row has its passage in its translation."""
        if f.passage_id is None or f.translation is None:
            return
        key = (f.passage_id, f.translation)
        first = self._seen.setdefault(key, (content_id, where))
        if first[0] != content_id:
            raise CatalogError(
                "passage_id",
                f"{where}: passage {f.passage_id} in {f.translation} is already {first[0]!r} ({first[1]}):"
                " one item per passage and translation",
            )
