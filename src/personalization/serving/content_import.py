"""Bulk import of content embeddings (``personalization content import``) from jsonl, parquet or npy.

Formats:

* ``.jsonl``: one object per line: ``content_id`` and ``embedding`` (list of numbers)
  required; ``content_type``, ``title`` and ``model`` optional.
* ``.parquet``: columns ``content_id`` (string) and ``embedding`` (list of floats);
  ``content_type`` and ``title`` optional.
* ``.npy``: a 2-D float array, one row per item, with ``--ids``: a text file of the
  content ids, one per line, in row order.

Every vector must have the deployment's dimension (``PERSONALIZATION_EMBEDDING_DIM``),
be finite and not all zero; ids must be unique and non-empty.  The whole file is
checked before anything is written, and written in one transaction: a bad file
writes nothing.  Vectors are stored L2-normalised (float32 little-endian).  Rows that
carry a ``content_type`` also upsert ``content_items``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from personalization.cache.serving import ServingCache
from personalization.core import embedding as emb
from personalization.errors import CacheUnavailable, FieldError, InvalidInput
from personalization.store.db import Database
from personalization.store.serving import ServingStore

MAX_ID_LENGTH = 256
FORMATS = ("jsonl", "parquet", "npy")


@dataclass
class ContentBatch:
    """Validated rows ready for the store: ids, unit vectors, optional types and titles."""

    ids: list[str]
    vectors: npt.NDArray[np.float32]
    content_types: list[str | None]
    titles: list[str | None]
    models: list[str | None]

    def rows(self, default_model: str) -> list[tuple[str, str, int, bytes, str | None, str | None]]:
        dim = int(self.vectors.shape[1])
        return [
            (
                cid,
                self.models[i] or default_model,
                dim,
                emb.encode(self.vectors[i]),
                self.content_types[i],
                self.titles[i],
            )
            for i, cid in enumerate(self.ids)
        ]


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


def _check_ids(ids: list[str], where: str) -> None:
    seen: dict[str, int] = {}
    for n, cid in enumerate(ids):
        if not isinstance(cid, str) or not cid.strip():
            raise _bad(where, f"row {n + 1}: content_id must be a non-empty string")
        if len(cid) > MAX_ID_LENGTH:
            raise _bad(where, f"row {n + 1}: content_id longer than {MAX_ID_LENGTH} characters")
        if cid in seen:
            raise _bad(where, f"row {n + 1}: duplicate content_id {cid!r} (first at row {seen[cid] + 1})")
        seen[cid] = n


def _check_matrix(mat: npt.NDArray[Any], dim: int, where: str) -> npt.NDArray[np.float32]:
    if mat.ndim != 2:
        raise _bad(where, f"expected a 2-D array (rows x {dim}), got {mat.ndim} dimension(s)")
    if mat.shape[1] != dim:
        raise _bad(where, f"embeddings have {mat.shape[1]} values, expected {dim} (PERSONALIZATION_EMBEDDING_DIM)")
    if not np.issubdtype(mat.dtype, np.number):
        raise _bad(where, f"embeddings must be numbers, got {mat.dtype}")
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        raise _bad(where, f"row {int(np.argmin(finite)) + 1}: embedding contains NaN or infinity")
    f32 = mat.astype(np.float32)
    if not np.isfinite(f32).all():
        raise _bad(where, "embedding value out of float32 range")
    zero = ~f32.any(axis=1)
    if zero.any():
        raise _bad(where, f"row {int(np.argmax(zero)) + 1}: embedding is all zeros")
    return emb.normalize_rows(f32)


def read_jsonl(path: Path, dim: int) -> ContentBatch:
    ids: list[str] = []
    vectors: list[npt.NDArray[np.float32]] = []
    types: list[str | None] = []
    titles: list[str | None] = []
    models: list[str | None] = []
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
            for name in ("content_id", "embedding"):
                if name not in obj:
                    raise _bad(name, f"line {n}: {name} is required")
            vec = obj["embedding"]
            if not isinstance(vec, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in vec
            ):
                raise _bad("embedding", f"line {n}: embedding must be a list of numbers")
            try:
                vectors.append(emb.check(vec, dim))
            except emb.EmbeddingError as exc:
                raise _bad("embedding", f"line {n}: {exc}") from None
            for name, out in (("content_type", types), ("title", titles), ("model", models)):
                value = obj.get(name)
                if value is not None and (not isinstance(value, str) or not value.strip()):
                    raise _bad(name, f"line {n}: {name} must be a non-empty string")
                out.append(value)
            cid = obj["content_id"]
            if not isinstance(cid, str):
                raise _bad("content_id", f"line {n}: content_id must be a string")
            ids.append(cid)
    if not ids:
        raise _bad("file", f"{path.name} has no rows")
    _check_ids(ids, "content_id")
    return ContentBatch(ids, emb.normalize_rows(np.stack(vectors)), types, titles, models)


def read_parquet(path: Path, dim: int) -> ContentBatch:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _bad("file", f"{path.name} is not a readable parquet file: {exc}") from None
    for name in ("content_id", "embedding"):
        if name not in table.column_names:
            raise _bad(name, f"column {name} is required (columns: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise _bad("file", f"{path.name} has no rows")
    col = table.column("embedding").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise _bad("embedding", f"column embedding must be a list of floats, got {col.type}")
    if col.null_count:
        raise _bad("embedding", "column embedding has null rows")
    lengths = np.asarray(pc.list_value_length(col))
    bad = np.nonzero(lengths != dim)[0]
    if bad.size:
        raise _bad("embedding", f"row {int(bad[0]) + 1}: embedding has {int(lengths[bad[0]])} values, expected {dim}")
    flat = col.flatten()
    if flat.null_count:
        raise _bad("embedding", "embedding contains null values")
    mat = _check_matrix(np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(-1, dim), dim, "embedding")
    ids = table.column("content_id").to_pylist()
    _check_ids(ids, "content_id")

    def optional(name: str) -> list[str | None]:
        if name not in table.column_names:
            return [None] * table.num_rows
        return [None if v is None else str(v) for v in table.column(name).to_pylist()]

    return ContentBatch(ids, mat, optional("content_type"), optional("title"), [None] * table.num_rows)


def read_npy(path: Path, ids_path: Path | None, dim: int) -> ContentBatch:
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
    n = len(ids)
    return ContentBatch(ids, vectors, [None] * n, [None] * n, [None] * n)


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


async def import_batch(db: Database, cache: ServingCache, batch: ContentBatch, model: str) -> tuple[int, bool]:
    """Write a validated batch in one transaction, then tell serving processes (content version).

    Returns (rows written, whether the serving caches were told).  When Redis is
    unreachable the rows are still written; serving processes pick them up when their
    in-process cache ages out (``content_cache_max_age_s``).
    """
    written = await ServingStore(db).import_content(batch.rows(model))
    try:
        await cache.bump_content_version()
    except CacheUnavailable:
        return written, False
    return written, True
