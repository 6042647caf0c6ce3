"""The audit log: one row in ``audit_log`` and one structured log line per audited action.

Audited: key creation and revocation, flag-rule changes, erase and export.  Rows hold no
personal data: a user appears only as :func:`subject_hash` of the user id, counts and
table names describe what was touched, and the actor is an API key id and name (or the
operating-system account that ran the CLI).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import uuid
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

log = logging.getLogger("personalization.audit")
_SQL = "security.sql"


def subject_hash(user_id: uuid.UUID | str) -> str:
    """SHA-256 (hex) of the canonical user id: lets an operator check "was this id erased?"."""
    return hashlib.sha256(str(uuid.UUID(str(user_id))).encode()).hexdigest()


def cli_actor() -> str:
    """Actor name of a command run from a shell."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        who = "unknown"
    return f"cli:{who}"


def _jsonb(details: dict[str, Any]) -> Jsonb:
    return Jsonb(details, dumps=lambda o: orjson.dumps(o, default=str).decode())


def _log_line(audit_id: int, actor: str, action: str, subject: str | None, target: str | None, outcome: str,
              details: dict[str, Any]) -> None:
    log.info(
        "audit %s %s",
        action,
        outcome,
        extra={
            "audit_id": audit_id,
            "audit_action": action,
            "actor": actor,
            "subject_hash": subject,
            "target": target,
            "outcome": outcome,
            "details": details,
        },
    )


async def record_in(
    conn: AsyncConnection[Any],
    *,
    actor: str,
    action: str,
    subject: uuid.UUID | str | None = None,
    target: str | None = None,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> int:
    """Insert an audit row inside the caller's transaction; returns its id (logged by the caller's commit)."""
    details = details or {}
    sh = subject_hash(subject) if subject is not None else None
    async with conn.cursor(row_factory=dict_row) as cur:
        with wrap_exceptions():
            await cur.execute(
                q("insert_audit", _SQL),
                {"actor": actor, "action": action, "subject_hash": sh, "target": target, "outcome": outcome,
                 "details": _jsonb(details)},
            )
            row = await cur.fetchone()
    assert row is not None
    return int(row["audit_id"])


async def record(
    db: Database,
    *,
    actor: str,
    action: str,
    subject: uuid.UUID | str | None = None,
    target: str | None = None,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> int:
    """Write one audit row in its own transaction and the matching log line."""
    details = details or {}
    async with db.connection() as conn:
        audit_id = await record_in(conn, actor=actor, action=action, subject=subject, target=target,
                                   outcome=outcome, details=details)
    _log_line(audit_id, actor, action, subject_hash(subject) if subject is not None else None, target, outcome,
              details)
    return audit_id


async def finish(db: Database, audit_id: int, *, actor: str, action: str, subject: uuid.UUID | str | None,
                 target: str | None, outcome: str, details: dict[str, Any]) -> None:
    """Set the final outcome and details of a row written earlier, and log the line."""
    async with db.connection() as conn:
        with wrap_exceptions():
            await conn.execute(q("update_audit", _SQL),
                               {"audit_id": audit_id, "outcome": outcome, "details": _jsonb(details)})
    _log_line(audit_id, actor, action, subject_hash(subject) if subject is not None else None, target, outcome,
              details)


async def recent(db: Database, action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit rows, optionally of one action."""
    return await db.fetch_all(q("list_audit", _SQL), {"action": action, "limit": limit})
