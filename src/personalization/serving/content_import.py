"""Bulk import of the content catalogue and its embeddings (``personalization content import``).

Formats:

* ``.jsonl``: one object per line with ``content_id`` and any of ``embedding`` (list of
  numbers), ``model``, and the catalogue fields ``content_type``, ``title``, ``body``,
  ``passage_id``, ``translation``, ``series``, ``position``, ``tags`` (list of strings)
  and ``metadata`` (object).  Unknown fields are an error (a typo would otherwise be lost).
* ``.parquet``: the same names as columns (``embedding`` a list of floats, ``tags`` a
  list of strings, ``metadata`` JSON text); only ``content_id`` is required.
* ``.npy``: a 2-D float array of embeddings, one row per item, with ``--ids``: a text
  file of the content ids, one per line, in row order.

A row carries an embedding, catalogue fields, or both: a catalogue-only file (no
embeddings at all) is fine.  Every vector must have the deployment's dimension
(``PERSONALIZATION_EMBEDDING_DIM``), be finite and not all zero; ids must be unique
and non-empty; catalogue values follow :mod:`personalization.core.catalog`.  The
whole file is checked before anything is written, and written in one transaction
(with the checks that need the stored catalogue: a new item names its content_type,
a passage has one item per translation): a bad file writes nothing.  Vectors are
stored L2-normalised (float32 little-endian).  Catalogue values given replace the
stored ones; values not given (absent or null) keep them.  A successful import raises
the durable catalogue version (:func:`personalization.store.serving.catalog_version`)
and then Redis's content version, which serving processes watch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from personalization.cache.serving import ServingCache
from personalization.core import catalog as cat
from personalization.core import embedding as emb
from personalization.errors import CacheUnavailable, FieldError, InvalidInput
from personalization.store.db import Database
from personalization.store.serving import ContentImportRow, ImportOutcome, ServingStore

MAX_ID_LENGTH = cat.MAX_CONTENT_ID
FORMATS = ("jsonl", "parquet", "npy")
ROW_FIELDS = frozenset({"content_id", "embedding", "model", *cat.CATALOG_FIELDS})


@dataclass
class ContentBatch:
    """Validated rows ready for the store.

    ``vectors[i]`` is row ``i``'s unit vector or None (a catalogue-only row);
    ``catalog[i]`` its catalogue values (:data:`~personalization.core.catalog.NO_FIELDS`
    for an embedding-only row); ``row_numbers[i]`` its line or row in the file, named
    ``unit`` in messages.
    """

    ids: list[str]
    vectors: list[emb.Vector | None]
    catalog: list[cat.CatalogFields]
    models: list[str | None]
    row_numbers: list[int]
    unit: str = "row"

    @classmethod
    def of_embeddings(
        cls, ids: Sequence[str], vectors: npt.NDArray[np.float32], model: str | None = None
    ) -> ContentBatch:
        """A batch of embeddings only (rows of ``vectors`` are normalised here)."""
        unit = emb.normalize_rows(np.asarray(vectors, dtype=np.float32))
        n = len(ids)
        return cls(list(ids), list(unit), [cat.NO_FIELDS] * n, [model] * n, list(range(1, n + 1)))

    @property
    def embedding_count(self) -> int:
        """Rows that carry an embedding."""
        return sum(1 for v in self.vectors if v is not None)

    def rows(self, default_model: str) -> list[ContentImportRow]:
        """The store's rows (embeddings encoded, the default model filled in)."""
        out: list[ContentImportRow] = []
        for i, cid in enumerate(self.ids):
            vec = self.vectors[i]
            f = self.catalog[i]
            out.append(ContentImportRow(
                self.row_numbers[i], cid,
                None if vec is None else (self.models[i] or default_model),
                None if vec is None else int(vec.shape[0]),
                None if vec is None else emb.encode(vec),
                f.given(), f.content_type, f.title, f.body, f.passage_id, f.translation, f.series, f.position,
                None if f.tags is None else list(f.tags), f.metadata,
            ))
        return out


def _bad(where: str, msg: str) -> InvalidInput:
    return InvalidInput([FieldError([where], msg)])


def detect_format(path: Path) -> str:
    """The format from the file name's extension."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "json":
        suffix = "jsonl"
    if suffix not in FORMATS:
        raise _bad("format", f"cannot tell the format of {path.name}: use .jsonl, .parquet or .npy (or --format)")
    return suffix


def _check_ids(ids: list[Any], where: str, unit: str = "row", numbers: Sequence[int] | None = None) -> None:
    seen: dict[str, int] = {}
    for n, cid in enumerate(ids):
        label = f"{unit} {numbers[n] if numbers else n + 1}"
        if not isinstance(cid, str) or not cid.strip():
            raise _bad(where, f"{label}: content_id must be a non-empty string")
        if len(cid) > MAX_ID_LENGTH:
            raise _bad(where, f"{label}: content_id longer than {MAX_ID_LENGTH} characters")
        if "\x00" in cid:
            raise _bad(where, f"{label}: content_id contains a NUL character")
        if cid in seen:
            first = numbers[seen[cid]] if numbers else seen[cid] + 1
            raise _bad(where, f"{label}: duplicate content_id {cid!r} (first at {unit} {first})")
        seen[cid] = n


def _check_matrix(
    mat: npt.NDArray[Any], dim: int, where: str, numbers: npt.NDArray[np.intp] | None = None
) -> npt.NDArray[np.float32]:
    """Shape, finiteness and direction of a matrix of embeddings; rows normalised.

    ``numbers`` are the file's row numbers (from 1) of the matrix rows, when they differ
    from 1..n (a parquet file whose embedding column has gaps).
    """

    def row(k: int) -> int:
        return int(numbers[k]) if numbers is not None else k + 1

    if mat.ndim != 2:
        raise _bad(where, f"expected a 2-D array (rows x {dim}), got {mat.ndim} dimension(s)")
    if mat.shape[1] != dim:
        raise _bad(where, f"embeddings have {mat.shape[1]} values, expected {dim} (PERSONALIZATION_EMBEDDING_DIM)")
    if not np.issubdtype(mat.dtype, np.number):
        raise _bad(where, f"embeddings must be numbers, got {mat.dtype}")
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        raise _bad(where, f"row {row(int(np.argmin(finite)))}: embedding contains NaN or infinity")
    f32 = mat.astype(np.float32)
    in_range = np.isfinite(f32).all(axis=1)
    if not in_range.all():
        raise _bad(where, f"row {row(int(np.argmin(in_range)))}: embedding value out of float32 range")
    zero = ~f32.any(axis=1)
    if zero.any():
        raise _bad(where, f"row {row(int(np.argmax(zero)))}: embedding is all zeros")
    return emb.normalize_rows(f32)


def _row_fields(get: Callable[[str], Any], where: str, translations: cat.TranslationIndex,
                content_id: str) -> tuple[cat.CatalogFields, str | None]:
    """Catalogue values and model of one row (CatalogError becomes InvalidInput)."""
    try:
        fields = cat.parse_fields(get, where)
        model = cat.text(get("model"), "model", where, cat.MAX_MODEL)
        translations.add(content_id, fields, where)
    except cat.CatalogError as exc:
        raise _bad(exc.field, str(exc)) from None
    return fields, model


def read_jsonl(path: Path, dim: int) -> ContentBatch:
    """Read and validate a JSON-lines file (blank lines are skipped; messages name the line)."""
    ids: list[str] = []
    vectors: list[emb.Vector | None] = []
    catalog: list[cat.CatalogFields] = []
    models: list[str | None] = []
    numbers: list[int] = []
    translations = cat.TranslationIndex()
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise _bad("line", f"line {n}: not JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise _bad("line", f"line {n}: expected an object")
            unknown = sorted(set(obj) - ROW_FIELDS)
            if unknown:
                known = ", ".join(sorted(ROW_FIELDS))
                raise _bad(unknown[0], f"line {n}: unknown field {unknown[0]!r} (known: {known})")
            if "content_id" not in obj:
                raise _bad("content_id", f"line {n}: content_id is required")
            cid = obj["content_id"]
            if not isinstance(cid, str):
                raise _bad("content_id", f"line {n}: content_id must be a string")
            vectors.append(_jsonl_vector(obj.get("embedding"), dim, n))
            fields, model = _row_fields(obj.get, f"line {n}", translations, cid)
            if vectors[-1] is None and not fields.given():
                raise _bad("embedding", f"line {n}: nothing to import: give an embedding or catalogue fields")
            ids.append(cid)
            catalog.append(fields)
            models.append(model)
            numbers.append(n)
    if not ids:
        raise _bad("file", f"{path.name} has no rows")
    _check_ids(ids, "content_id", "line", numbers)
    return ContentBatch(ids, vectors, catalog, models, numbers, unit="line")


def _jsonl_vector(vec: Any, dim: int, n: int) -> emb.Vector | None:
    if vec is None:
        return None
    if not isinstance(vec, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vec):
        raise _bad("embedding", f"line {n}: embedding must be a list of numbers")
    try:
        return emb.normalize(emb.check(vec, dim))
    except emb.EmbeddingError as exc:
        raise _bad("embedding", f"line {n}: {exc}") from None


def read_parquet(path: Path, dim: int) -> ContentBatch:
    """Read and validate a parquet file (messages name the row, from 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _bad("file", f"{path.name} is not a readable parquet file: {exc}") from None
    if "content_id" not in table.column_names:
        raise _bad("content_id", f"column content_id is required (columns: {', '.join(table.column_names)})")
    unknown = sorted(set(table.column_names) - ROW_FIELDS)
    if unknown:
        raise _bad(unknown[0], f"unknown column {unknown[0]!r} (known: {', '.join(sorted(ROW_FIELDS))})")
    if table.num_rows == 0:
        raise _bad("file", f"{path.name} has no rows")
    n_rows = table.num_rows
    vectors: list[emb.Vector | None] = (
        _parquet_vectors(table, dim) if "embedding" in table.column_names else [None] * n_rows
    )
    ids = table.column("content_id").to_pylist()
    _check_ids(ids, "content_id")
    columns = {
        name: table.column(name).to_pylist()
        for name in (*cat.CATALOG_FIELDS, "model")
        if name in table.column_names
    }
    catalog: list[cat.CatalogFields] = []
    models: list[str | None] = []
    translations = cat.TranslationIndex()
    for i in range(n_rows):
        def get(name: str, i: int = i) -> Any:
            col = columns.get(name)
            return None if col is None else col[i]

        fields, model = _row_fields(get, f"row {i + 1}", translations, ids[i])
        if vectors[i] is None and not fields.given():
            raise _bad("embedding", f"row {i + 1}: nothing to import: give an embedding or catalogue fields")
        catalog.append(fields)
        models.append(model)
    return ContentBatch(ids, vectors, catalog, models, list(range(1, n_rows + 1)))


def _parquet_vectors(table: Any, dim: int) -> list[emb.Vector | None]:
    """The embedding column as unit vectors; a null entry is a row without an embedding."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column("embedding").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise _bad("embedding", f"column embedding must be a list of floats, got {col.type}")
    present = np.asarray(col.is_valid())
    out: list[emb.Vector | None] = [None] * len(col)
    if not present.any():
        return out
    given = col.filter(pa.array(present))
    lengths = np.asarray(pc.list_value_length(given))
    rows = np.nonzero(present)[0]
    bad = np.nonzero(lengths != dim)[0]
    if bad.size:
        raise _bad("embedding", (
            f"row {int(rows[bad[0]]) + 1}: embedding has {int(lengths[bad[0]])} values, expected {dim}"
        ))
    flat = given.flatten()
    if flat.null_count:
        raise _bad("embedding", "embedding contains null values")
    values = np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(-1, dim)
    mat = _check_matrix(values, dim, "embedding", rows + 1)
    for k, r in enumerate(rows):
        out[int(r)] = mat[k]
    return out


def read_npy(path: Path, ids_path: Path | None, dim: int) -> ContentBatch:
    """Read and validate an .npy matrix of embeddings with its ids file."""
    if ids_path is None:
        raise _bad("ids", "an .npy file needs --ids: a text file with one content id per line, in row order")
    try:
        mat = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _bad("file", f"{path.name} is not a readable .npy array: {exc}") from None
    ids = [ln.rstrip("\r\n") for ln in ids_path.read_text().splitlines()]
    while ids and not ids[-1]:
        ids.pop()
    vectors = _check_matrix(mat, dim, "embedding")
    if len(ids) != vectors.shape[0]:
        raise _bad("ids", f"{ids_path.name} has {len(ids)} ids for {vectors.shape[0]} rows")
    _check_ids(ids, "ids")
    return ContentBatch.of_embeddings(ids, vectors)


def read_file(path: Path, dim: int, fmt: str | None = None, ids_path: Path | None = None) -> ContentBatch:
    """Read and validate a whole file (nothing is written here)."""
    if not path.is_file():
        raise _bad("path", f"{path} does not exist or is not a file")
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        return read_jsonl(path, dim)
    if fmt == "parquet":
        return read_parquet(path, dim)
    if fmt == "npy":
        return read_npy(path, ids_path, dim)
    raise _bad("format", f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


async def import_batch(
    db: Database, cache: ServingCache, batch: ContentBatch, model: str
) -> tuple[ImportOutcome, bool]:
    """Write a validated batch in one transaction, then tell serving processes (content version).

    Returns what was written (with the new durable catalogue version) and whether the
    serving caches were told.  When Redis is unreachable the rows are still written;
    serving processes pick them up when their in-process cache ages out
    (``content_cache_max_age_s``).
    """
    outcome = await ServingStore(db).import_content(batch.rows(model), unit=batch.unit)
    try:
        await cache.bump_content_version()
    except CacheUnavailable:
        return outcome, False
    return outcome, True
