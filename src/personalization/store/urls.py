"""Database URL helpers (URLs stay URLs so every tool, yoyo included, can read them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parts.scheme}://...")
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def dbname_of(url: str) -> str:
    """The database named by a URL (``postgres`` when it names none)."""
    path = urlsplit(url).path.lstrip("/")
    return path or "postgres"


def conninfo_parts(url: str) -> dict[str, Any]:
    """The connection parameters of a URL or conninfo string, as libpq reads them (host, port, dbname...)."""
    return conninfo_to_dict(url)
