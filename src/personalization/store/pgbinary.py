"""PostgreSQL's binary COPY format for fixed-width columns, built with numpy.

The learner writes tens of thousands of rows per batch; passing them as Python lists costs
a Python call per value in the driver.  For rows whose every field has a fixed width
(integers, float8, bool, uuid, timestamptz, bytea of one length) the whole COPY stream is
one numpy record array: a header, then per row a field count and, per field, a length and
the big-endian value, then a trailer (PostgreSQL documentation, "COPY", binary format).
NULL is not supported (it would make rows uneven): callers send a flag column instead.

Timestamps travel as int64 microseconds since the Unix epoch on the Python side and as
PostgreSQL's microseconds since 2000-01-01 on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["PG_EPOCH_US", "ColumnType", "encode_rows"]

ColumnType = Literal["int2", "int4", "int8", "float8", "bool", "uuid", "timestamptz", "bytea"]

# 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
PG_EPOCH_US = 946_684_800_000_000

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)

_SCALAR: dict[str, str] = {
    "int2": ">i2",
    "int4": ">i4",
    "int8": ">i8",
    "float8": ">f8",
    "bool": "u1",
    "timestamptz": ">i8",
}


def _field_dtype(kind: ColumnType, width: int | None) -> str:
    if kind in _SCALAR:
        return _SCALAR[kind]
    if kind == "uuid":
        return "V16"
    if width is None:
        raise ValueError("a bytea column needs its width")
    return f"V{width}"


def _record_dtype(kinds: Sequence[tuple[ColumnType, int | None]]) -> np.dtype[np.void]:
    fields: list[tuple[str, str]] = [("nfields", ">i2")]
    for i, (kind, width) in enumerate(kinds):
        fields.append((f"len{i}", ">i4"))
        fields.append((f"val{i}", _field_dtype(kind, width)))
    return np.dtype(fields)


def encode_rows(columns: Sequence[tuple[ColumnType, npt.NDArray[np.generic]]]) -> bytes:
    """The binary COPY stream of ``columns`` (equal lengths; no NULLs).

    Values: integers/floats/bools as numbers; ``timestamptz`` as int64 microseconds since
    the Unix epoch; ``uuid`` as 16-byte rows (``uint8`` of shape (n, 16) or ``V16``);
    ``bytea`` as a ``uint8`` array of shape (n, width).
    """
    if not columns:
        raise ValueError("no columns")
    n = len(columns[0][1])
    kinds: list[tuple[ColumnType, int | None]] = []
    for kind, values in columns:
        if len(values) != n:
            raise ValueError("columns of different lengths")
        width = None
        if kind in ("bytea", "uuid") and values.dtype.kind != "V":
            width = int(values.shape[1]) if values.ndim == 2 else None
        elif kind == "bytea":
            width = values.dtype.itemsize
        if kind == "uuid" and (width or 16) != 16:
            raise ValueError("uuid values are 16 bytes")
        kinds.append((kind, width))
    rec = np.empty(n, dtype=_record_dtype(kinds))
    rec["nfields"] = len(columns)
    for i, (kind, values) in enumerate(columns):
        field = f"val{i}"
        size = rec.dtype.fields[field][0].itemsize if rec.dtype.fields else 0
        rec[f"len{i}"] = size
        if kind == "timestamptz":
            rec[field] = np.asarray(values, dtype=np.int64) - PG_EPOCH_US
        elif kind in ("uuid", "bytea"):
            raw = np.ascontiguousarray(values)
            if raw.dtype.kind != "V":
                raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(n, -1).view(f"V{size}").reshape(n)
            rec[field] = raw
        elif kind == "bool":
            rec[field] = np.asarray(values, dtype=bool)
        else:
            rec[field] = values
    return _HEADER + rec.tobytes() + _TRAILER
