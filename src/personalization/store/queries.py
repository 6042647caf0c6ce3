"""Named SQL: every query of the store lives in ``store/sql/*.sql`` under a ``-- name:`` header."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(?P<name>[a-z0-9_]+)\s*$", re.MULTILINE)


@cache
def load(filename: str = "queries.sql") -> dict[str, str]:
    """Parse one SQL file into ``{name: statement}``."""
    text = (resources.files("personalization.store") / "sql" / filename).read_text()
    out: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end() : end].strip()
        # Drop the comment lines that document the query; keep the statement.
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        stmt = "\n".join(lines).strip().rstrip(";")
        if m["name"] in out:
            raise ValueError(f"duplicate query name {m['name']} in {filename}")
        out[m["name"]] = stmt
    return out


def q(name: str, filename: str = "queries.sql") -> str:
    """The statement called ``name``."""
    return load(filename)[name]
