"""Domain errors.  Use cases raise these; entry points map them to HTTP / exit codes.

Driver errors (psycopg, redis) are translated into these at the store and cache
boundaries, so nothing above ``store/`` and ``cache/`` imports a driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class PersonalizationError(Exception):
    """Base class of every error the library raises on purpose."""


@dataclass
class FieldError:
    """One problem with one input field; ``loc`` is the path to it (e.g. ``["events", 3, "signal_weight"]``)."""

    loc: list[str | int]
    msg: str
    type: str = "value_error"
    input: Any = None

    def as_dict(self) -> dict[str, Any]:
        field_path = ".".join(str(p) for p in self.loc if p not in ("body", "path", "query"))
        out: dict[str, Any] = {"loc": self.loc, "field": field_path, "msg": self.msg, "type": self.type}
        return out


class InvalidInput(PersonalizationError):
    """The request is malformed; nothing was written."""

    def __init__(self, errors: list[FieldError], status: int = 422) -> None:
        self.errors = errors
        self.status = status
        super().__init__("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors))


@dataclass
class NotFound(PersonalizationError):
    """A referenced entity does not exist."""

    resource: str
    field_name: str
    value: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.resource} {self.value} not found"


class Conflict(PersonalizationError):
    """The write conflicts with the stored state."""

    def __init__(self, msg: str, loc: list[str | int] | None = None) -> None:
        self.loc = loc or []
        super().__init__(msg)


class StoreError(PersonalizationError):
    """PostgreSQL refused a statement for a reason that is not the caller's input."""


class StoreUnavailable(StoreError):
    """PostgreSQL could not be reached or timed out."""


class CacheUnavailable(PersonalizationError):
    """Redis could not be reached or timed out (callers degrade, never fail a write)."""
