"""Is a transaction visible in a ``pg_snapshot``?  (pure: no I/O)

``learner recompute`` saves the snapshot (``xmin:xmax:xip,...``, 64-bit xids) its events
were read in; the stream carries Debezium's ``source.txId``, the 32-bit xid.  The 32-bit
value is widened with the epoch of the snapshot's ``xmax``: PostgreSQL keeps every live
xid within 2^31 of the next one, so the nearest 64-bit value is the right one.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["parse_snapshot", "visible_in_snapshot"]

_EPOCH = 1 << 32
_HALF = 1 << 31


@lru_cache(maxsize=4096)
def parse_snapshot(text: str) -> tuple[int, int, frozenset[int]]:
    """``(xmin, xmax, xip)`` of a snapshot's text form; ValueError when it is not one."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"not a pg_snapshot: {text!r}")
    xmin, xmax = int(parts[0]), int(parts[1])
    xip = frozenset(int(x) for x in parts[2].split(",") if x)
    return xmin, xmax, xip


def widen(xid32: int, reference: int) -> int:
    """The 64-bit xid whose low 32 bits are ``xid32``, closest to ``reference``."""
    candidate = (reference & ~(_EPOCH - 1)) | (xid32 & (_EPOCH - 1))
    if candidate - reference > _HALF:
        candidate -= _EPOCH
    elif reference - candidate > _HALF:
        candidate += _EPOCH
    return candidate


def visible_in_snapshot(xid32: int, snapshot: str) -> bool:
    """Whether the (committed) transaction ``xid32`` was visible in ``snapshot``."""
    xmin, xmax, xip = parse_snapshot(snapshot)
    xid = widen(xid32, xmax)
    if xid < xmin:
        return True
    if xid >= xmax:
        return False
    return xid not in xip
