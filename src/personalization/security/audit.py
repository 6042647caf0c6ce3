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
from typing import Any, Protocol

from personalization.store.db import Database
from personalization.store.security import AuditRows

log = logging.getLogger("personalization.audit")


class AuditWriter(Protocol):
    """Something that inserts an audit row inside its own open transaction (the erase's)."""

    async def insert_audit(self, row: dict[str, Any]) -> int:
        """Insert ``row`` (the ``audit_log`` columns); returns its id."""
        ...


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


def _row(actor: str, action: str, subject: uuid.UUID | str | None, target: str | None, outcome: str,
         details: dict[str, Any]) -> dict[str, Any]:
    sh = subject_hash(subject) if subject is not None else None
    return {"actor": actor, "action": action, "subject_hash": sh, "target": target, "outcome": outcome,
            "details": details}


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


def log_line(audit_id: int | None, actor: str, action: str, subject_hash: str | None, target: str | None,
             outcome: str, details: dict[str, Any]) -> None:
    """The structured log line of an audit row another component wrote (the erase outbox's completion)."""
    _log_line(audit_id if audit_id is not None else 0, actor, action, subject_hash, target, outcome, details)


async def record_in(
    tx: AuditWriter,
    *,
    actor: str,
    action: str,
    subject: uuid.UUID | str | None = None,
    target: str | None = None,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> int:
    """Insert an audit row inside the caller's transaction; returns its id (logged by the caller's commit)."""
    return await tx.insert_audit(_row(actor, action, subject, target, outcome, details or {}))


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
    audit_id = await AuditRows(db).insert(_row(actor, action, subject, target, outcome, details))
    _log_line(audit_id, actor, action, subject_hash(subject) if subject is not None else None, target, outcome,
              details)
    return audit_id


async def finish(db: Database, audit_id: int, *, actor: str, action: str, subject: uuid.UUID | str | None,
                 target: str | None, outcome: str, details: dict[str, Any]) -> None:
    """Set the final outcome and details of a row written earlier, and log the line."""
    await AuditRows(db).update(audit_id, outcome, details)
    _log_line(audit_id, actor, action, subject_hash(subject) if subject is not None else None, target, outcome,
              details)


async def recent(db: Database, action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit rows, optionally of one action."""
    return await AuditRows(db).recent(action, limit)
