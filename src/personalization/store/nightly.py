"""PostgreSQL side of the nightly job and the feature store (``feature_store`` schema).

The job runs on plain (synchronous) psycopg connections: it is a batch process with a few
long statements, and two of them run at once on two connections (the rollup refresh and
the decay pass, sharing one exported snapshot).  Every driver error leaves through
``wrap_exceptions`` so the use case (``personalization.nightly.job``) never sees psycopg.

Length: a little over 500 lines because the run ledger, the view swap and the snapshot
build share the advisory-lock keys, the view catalogue and the SQL templates, and are
read together when the swap's locking is reviewed; the ADBC point-in-time session is in
``store/pit.py``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, assert_never

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from personalization.config import RefreshMode
from personalization.core.decay import DecayConfig
from personalization.errors import StoreError
from personalization.store.db import wrap_exceptions
from personalization.store.pit import PitSession, pit_session
from personalization.store.queries import q

log = logging.getLogger("personalization.nightly.job")

SQL_FILE = "nightly.sql"
APPLICATION_NAME = "personalization-nightly"
ROLLUPS_VIEW = "user_signal_rollups"
# The rebuilt view before its swap; a run killed before the swap leaves it behind and the
# next run drops it.
NEXT_VIEW = f"{ROLLUPS_VIEW}__next"
# Advisory lock keys (bigint).  RUN_LOCK: one nightly run at a time, across processes and
# hosts.  SWAP_LOCK: the snapshot swap against erase_user_features.
RUN_LOCK_KEY = 0x7A6E_6967_6874_0001
SWAP_LOCK_KEY = 0x7A6E_6967_6874_0002


def _q(name: str) -> str:
    return q(name, SQL_FILE)


def _c(name: str, **parts: sql.Composable) -> sql.Composed:
    # Templates from nightly.sql with {identifier}/{literal} slots.
    return sql.SQL(_q(name)).format(**parts)


def partition_name(as_of: date) -> str:
    """Name of the partition holding the snapshot of ``as_of``."""
    return f"user_signal_features_{as_of:%Y%m%d}"


def decay_sql(cfg: DecayConfig) -> tuple[sql.Composable, sql.Composable]:
    """``(scale, half_life_s)`` as SQL ``CASE signal_type`` expressions built from ``cfg``.

    This is the SQL form of :mod:`personalization.core.decay`: the parameters come from the
    same ``DecayConfig`` object, so the two forms cannot drift apart.
    """

    def case(attr: str) -> sql.Composable:
        whens = [
            sql.SQL("WHEN {} THEN {}::float8").format(sql.Literal(name), sql.Literal(float(getattr(d, attr))))
            for name, d in sorted(cfg.signals.items())
        ]
        default = sql.SQL("{}::float8").format(sql.Literal(float(getattr(cfg.default, attr))))
        if not whens:
            return default
        return sql.SQL("CASE signal_type {} ELSE {} END").format(sql.SQL(" ").join(whens), default)

    return case("scale"), case("half_life_s")


@dataclass(frozen=True)
class PrivacyFilter:
    """Which stored ``privacy_level`` values may have personalized features."""

    levels: tuple[str, ...]
    null_ok: bool

    def params(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "null_ok": self.null_ok}


@dataclass(frozen=True)
class BuildResult:
    """What one snapshot build did."""

    rows: int
    dropped: list[date]
    computed_at: datetime
    # How user_signal_rollups was refreshed: 'swap' (rebuilt beside it and swapped in) or
    # 'concurrently' (REFRESH ... CONCURRENTLY, by setting or as the swap's fallback).
    refresh: str = "concurrently"


@dataclass(frozen=True)
class SwapPolicy:
    """How the rebuilt rollup view is swapped in.

    The swap's ``DROP`` of the old view needs its ACCESS EXCLUSIVE lock; while it waits for
    a reader to finish, readers arriving after it queue behind it.  So it waits at most
    ``lock_timeout_ms`` per attempt (the longest a reader is held up), backs off and tries
    again, ``attempts`` times; then the run refreshes the view CONCURRENTLY instead.
    """

    lock_timeout_ms: int = 100
    attempts: int = 25
    max_backoff_s: float = 2.0


@dataclass(frozen=True)
class _ViewInfo:
    oid: int
    schema: str
    name: str
    owner: str
    definition: str
    comment: str | None
    has_dependents: bool
    indexes: list[tuple[str, str]]
    grants: list[tuple[str | None, str, bool]]

    def ident(self, name: str | None = None) -> sql.Identifier:
        return sql.Identifier(self.schema, name or self.name)


_INDEXDEF = re.compile(r"^CREATE (?P<unique>UNIQUE )?INDEX \S+ ON (?:ONLY )?\S+ (?P<rest>USING .*)$", re.DOTALL)


def _next_index_name(i: int) -> str:
    return f"{NEXT_VIEW}_i{i}"


def _parallel(background: Callable[[], None], foreground: Callable[[], None], name: str) -> None:
    """Run ``background`` in a thread while ``foreground`` runs here; re-raise the first error.

    Each callable owns its own connection (a psycopg connection is not shared across
    threads here), so the two statements really run at once on two backends.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            background()
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    try:
        foreground()
    finally:
        worker.join()
    if errors:
        raise errors[0]


class NightlyStore:
    """Connections and statements of the nightly job."""

    def __init__(self, database_url: str, *, work_mem: str = "64MB", connect_timeout_s: float = 5.0,
                 refresh_mode: RefreshMode = "swap", swap: SwapPolicy | None = None) -> None:
        self.database_url = database_url
        self.work_mem = work_mem
        self.connect_timeout_s = connect_timeout_s
        self.refresh_mode: RefreshMode = refresh_mode
        self.swap = swap or SwapPolicy()

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A connection with the job's session settings.

        ``client_connection_check_interval`` makes a backend notice within a second that
        the job process died, even while it waits on a lock, so its transaction is rolled
        back and its locks released instead of lingering until the statement ends.
        """
        with wrap_exceptions():
            return psycopg.connect(
                self.database_url,
                autocommit=autocommit,
                connect_timeout=max(1, int(self.connect_timeout_s)),
                application_name=APPLICATION_NAME,
                # No parallel query: the job runs its own two statements at once (rebuild and
                # decay pass), and workers on top of them would only oversubscribe the cores.
                options=f"-c work_mem={self.work_mem} -c client_connection_check_interval=1000"
                " -c statement_timeout=0 -c temp_buffers=64MB -c max_parallel_workers_per_gather=0",
            )

    # -- the run lock and the ledger (on the long-lived ledger connection) ---------------

    @staticmethod
    def try_lock(conn: psycopg.Connection[Any]) -> bool:
        """Take the run lock for this session; False if another run holds it."""
        with wrap_exceptions():
            row = conn.execute(_q("try_lock"), {"key": RUN_LOCK_KEY}).fetchone()
        return bool(row and row[0])

    @staticmethod
    def unlock(conn: psycopg.Connection[Any]) -> None:
        """Release the run lock."""
        with wrap_exceptions():
            conn.execute(_q("unlock"), {"key": RUN_LOCK_KEY})

    @staticmethod
    def mark_abandoned(conn: psycopg.Connection[Any]) -> list[int]:
        """Mark runs left 'running' by dead processes as failed (call with the lock held)."""
        with wrap_exceptions():
            return [r[0] for r in conn.execute(_q("mark_abandoned")).fetchall()]

    @staticmethod
    def insert_run(conn: psycopg.Connection[Any], as_of: date, trigger: str, status: str,
                   error: str | None = None) -> int:
        """Add a ledger row; returns its run id."""
        with wrap_exceptions():
            row = conn.execute(
                _q("insert_run"), {"as_of": as_of, "trigger": trigger, "status": status, "error": error}
            ).fetchone()
        assert row is not None
        return int(row[0])

    @staticmethod
    def finish_run(conn: psycopg.Connection[Any], run_id: int, status: str, *, rows: int | None = None,
                   dropped: int | None = None, error: str | None = None) -> None:
        """Record the outcome of a run."""
        with wrap_exceptions():
            conn.execute(
                _q("finish_run"),
                {"run_id": run_id, "status": status, "row_count": rows, "dropped": dropped, "error": error},
            )

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest ledger rows, newest first (dead 'running' rows shown as failed)."""
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur, wrap_exceptions():
            cur.execute(_q("list_runs"), {"limit": limit})
            return cur.fetchall()

    def list_snapshots(self) -> list[dict[str, Any]]:
        """Every snapshot in the catalogue, oldest first."""
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur, wrap_exceptions():
            cur.execute(_q("list_snapshots"))
            return cur.fetchall()

    def succeeded_since(self, as_of: date, since: datetime) -> bool:
        """True if a run for ``as_of`` succeeded after ``since`` (scheduler catch-up)."""
        with self.connect() as conn, wrap_exceptions():
            row = conn.execute(_q("succeeded_for"), {"as_of": as_of, "since": since}).fetchone()
        return bool(row and row[0])

    @staticmethod
    def drop_leftovers(conn: psycopg.Connection[Any]) -> list[str]:
        """Drop staging tables and a rebuilt view a killed run left behind (call with the run lock held)."""
        with wrap_exceptions():
            names = [r[0] for r in conn.execute(_q("leftover_tables")).fetchall()]
            for n in names:
                conn.execute(_c("drop_table", part=sql.Identifier(n)))
            for schema, view in conn.execute(_q("leftover_views"), {"name": NEXT_VIEW}).fetchall():
                conn.execute(_c("drop_view_if_exists", view=sql.Identifier(schema, view)))
                names.append(f"{schema}.{view}")
        return names

    # -- the work ---------------------------------------------------------------------

    def build_snapshot(self, *, run_id: int, as_of: date, as_of_ts: datetime, decay: DecayConfig,
                       privacy: PrivacyFilter, keep_from: date, ledger: psycopg.Connection[Any],
                       on_step: Any = None) -> BuildResult:
        """Refresh the rollups, copy them into the dated snapshot and swap it in.

        Steps: (1) on one connection the rollup view is rebuilt beside the live one
        (``{view}__next``, from the view's own migrated query) -- or, in 'concurrently' mode,
        refreshed with REFRESH MATERIALIZED VIEW CONCURRENTLY -- while a second connection
        computes the decayed weights from the same exported snapshot of the events;
        (2) a staging table is filled from the refreshed rollups, indexed and committed
        while the other connection indexes the rebuilt view (neither is visible to readers);
        (3) the rebuilt view replaces the live one in a short transaction (see
        :class:`SwapPolicy`); (4) one short transaction replaces the date's partition, drops
        expired ones, writes the catalogue and marks the ledger row succeeded.  A crash
        before (4) commits leaves the previous snapshot as it was.

        Why not always CONCURRENTLY: PostgreSQL's concurrent refresh checks the new rows for
        duplicates with a self-join sorted on whole-row images and then diffs them against
        the old rows; on 400k rollup rows that costs ~4x the aggregate itself.  The swap
        costs one aggregate plus an index build, and readers wait at most the swap's bounded
        lock wait (never the rebuild).
        """
        step = on_step or (lambda _name: None)
        with self.connect(autocommit=False) as a, self.connect(autocommit=False) as b, wrap_exceptions():
            build = _SnapshotBuild(self, a, b, run_id=run_id, as_of=as_of, as_of_ts=as_of_ts, decay=decay,
                                   privacy=privacy)
            step("refresh")
            _parallel(build.decay_pass, build.refresh, "nightly-decay")
            step("copy")
            _parallel(build.index_next, build.copy, "nightly-index")
            step("swap")
            _parallel(build.analyze_stage, build.swap_view, "nightly-analyze")
            rows, dropped = build.publish(keep_from)
        return BuildResult(rows=rows, dropped=dropped, computed_at=build.computed_at, refresh=build.mode)

    @staticmethod
    def _view_info(conn: psycopg.Connection[Any]) -> _ViewInfo:
        row = conn.execute(_q("rollups_view"), {"name": ROLLUPS_VIEW}).fetchone()
        if row is None:
            raise StoreError(f"materialized view {ROLLUPS_VIEW} not found: run `personalization db upgrade`")
        oid, schema, name, owner, definition, comment, has_dependents = row
        indexes = [(r[0], r[1]) for r in conn.execute(_q("rollups_indexes"), {"oid": oid}).fetchall()]
        grants = [(r[0], r[1], bool(r[2])) for r in conn.execute(_q("rollups_grants"), {"oid": oid}).fetchall()]
        return _ViewInfo(oid=int(oid), schema=schema, name=name, owner=owner,
                         definition=str(definition).strip().rstrip(";"), comment=comment,
                         has_dependents=bool(has_dependents), indexes=indexes, grants=grants)

    @staticmethod
    def _next_index_sql(view: _ViewInfo, definition: str, i: int) -> sql.Composed:
        """The live view's index ``definition`` (pg_get_indexdef) re-targeted at the rebuilt view."""
        m = _INDEXDEF.match(definition)
        if m is None:
            raise StoreError(f"cannot re-create index of {view.name}: unexpected definition {definition!r}")
        return sql.SQL("CREATE {unique}INDEX {name} ON {view} {rest}").format(
            unique=sql.SQL(m["unique"] or ""), name=sql.Identifier(_next_index_name(i)),
            view=view.ident(NEXT_VIEW), rest=sql.SQL(m["rest"]),
        )

    def _swap_view(self, conn: psycopg.Connection[Any], view: _ViewInfo) -> bool:
        """Replace the live rollup view with the rebuilt one; False if its lock never came.

        One short transaction per attempt: under the erasure lock, rebuild the (still
        invisible) view again if a user erased since the job's snapshot is in it, then drop
        the live view and rename the rebuilt one and its indexes into place, with the live
        view's owner, grants and comment.  Prepared statements of readers re-plan against
        the new relation by name (PostgreSQL invalidates plans of a dropped relation).
        """
        policy = self.swap
        nxt = view.ident(NEXT_VIEW)
        for attempt in range(policy.attempts):
            try:
                conn.execute(_q("swap_lock"), {"key": SWAP_LOCK_KEY})
                stale = conn.execute(_c("next_has_erased_users", next=nxt)).fetchone()
                if stale and stale[0]:
                    log.info("users were erased while the rollups were rebuilt: rebuilding them again")
                    conn.execute(_c("rebuild_next", next=nxt))
                conn.execute(_q("swap_lock_timeout"), {"timeout": f"{policy.lock_timeout_ms}ms"})
                conn.execute(_c("drop_view", view=view.ident()))
                conn.execute(_c("rename_view", view=nxt, new_name=sql.Identifier(view.name)))
                for i, (name, _definition) in enumerate(view.indexes):
                    conn.execute(_c("rename_index", index=view.ident(_next_index_name(i)),
                                    new_name=sql.Identifier(name)))
                self._carry_over(conn, view)
                conn.commit()
                return True
            except psycopg.errors.LockNotAvailable:
                conn.rollback()
                pause = min(policy.max_backoff_s, 0.05 * 2**attempt)
                log.info("rollup view swap waits for readers", extra={"attempt": attempt + 1, "pause_s": pause})
                time.sleep(pause)
        return False

    @staticmethod
    def _carry_over(conn: psycopg.Connection[Any], view: _ViewInfo) -> None:
        """Owner, grants and comment of the dropped view onto its replacement."""
        target = view.ident()
        me = conn.execute("SELECT current_user").fetchone()
        if me is not None and me[0] != view.owner:
            conn.execute(_c("owner_view", view=target, owner=sql.Identifier(view.owner)))
        for grantee, privilege, grantable in view.grants:
            conn.execute(sql.SQL("GRANT {priv} ON {view} TO {who}{opt}").format(
                priv=sql.SQL(privilege), view=target,
                who=sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                opt=sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            ))
        if view.comment is not None:
            conn.execute(_c("comment_view", view=target, comment=sql.Literal(view.comment)))

    @staticmethod
    def _drop_partition(conn: psycopg.Connection[Any], as_of: date) -> None:
        part = partition_name(as_of)
        present = conn.execute(_q("partition_exists"), {"name": f"feature_store.{part}"}).fetchone()
        if present and present[0]:
            conn.execute(_c("detach_partition", part=sql.Identifier(part)))
            conn.execute(_c("drop_table", part=sql.Identifier(part)))

    # -- point-in-time export -----------------------------------------------------------

    def pit_session(self) -> contextlib.AbstractContextManager[PitSession]:
        """A session for a chunked point-in-time export (see :mod:`personalization.store.pit`)."""
        return pit_session(self.database_url, self.work_mem)


class _SnapshotBuild:
    """One run of :meth:`NightlyStore.build_snapshot` on its two connections.

    ``a`` carries the rollups, the stage and the final transaction; ``b`` (in the same
    exported snapshot as ``a``) the decay table and the index builds, so each pair of
    steps runs side by side (see ``_parallel``).
    """

    def __init__(self, store: NightlyStore, a: psycopg.Connection[Any], b: psycopg.Connection[Any], *,
                 run_id: int, as_of: date, as_of_ts: datetime, decay: DecayConfig, privacy: PrivacyFilter) -> None:
        self.store, self.a, self.b = store, a, b
        self.run_id, self.as_of, self.as_of_ts, self.decay, self.privacy = run_id, as_of, as_of_ts, decay, privacy
        self.stage = f"_stage_{run_id}"
        self.decay_tbl = f"_decay_{run_id}"
        self.lit_as_of = sql.SQL("{}::date").format(sql.Literal(as_of.isoformat()))
        a.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = a.execute(_q("export_snapshot")).fetchone()
        assert row is not None
        snapshot, self.computed_at = row[0], row[1]
        b.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        b.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        self.view = store._view_info(a)
        self.mode: RefreshMode = store.refresh_mode
        if self.mode == "swap" and self.view.has_dependents:
            log.warning("user_signal_rollups has dependent views: refreshing CONCURRENTLY instead of swapping",
                        extra={"run_id": run_id})
            self.mode = "concurrently"
        self.nxt = self.view.ident(NEXT_VIEW)
        self.rollups = self.nxt if self.mode == "swap" else self.view.ident()
        self.filled = 0

    def decay_pass(self) -> None:
        """(b) The decayed weight of every rollup row at ``as_of_ts``."""
        scale, half_life = decay_sql(self.decay)
        self.b.execute(_c("create_decay", decay=sql.Identifier(self.decay_tbl), scale=scale, half_life=half_life,
                          at=sql.Literal(self.as_of_ts),
                          levels=sql.SQL("{}::text[]").format(sql.Literal(list(self.privacy.levels))),
                          null_ok=sql.Literal(self.privacy.null_ok)))
        # Statistics for the copy's join: without them the planner sorts both sides
        # for a merge join (2-3x slower than the hash join it picks with them).
        self.b.execute(_c("analyze", table=sql.Identifier("feature_store", self.decay_tbl)))
        self.b.commit()

    def refresh(self) -> None:
        """(a) Rebuild the view beside the live one, or refresh it concurrently."""
        mode = self.mode
        if mode == "swap":
            # A leftover of a killed run was dropped by drop_leftovers before this run.
            self.a.execute(_c("create_next_view", next=self.nxt, definition=sql.SQL(self.view.definition)))
            self.a.execute(_c("analyze", table=self.nxt))
        elif mode == "concurrently":
            self.a.execute(_q("refresh_rollups"))
        else:
            assert_never(mode)
        self.a.commit()

    def index_next(self) -> None:
        """(b) The live view's indexes on the rebuilt one."""
        if self.mode == "swap":
            for i, (_name, definition) in enumerate(self.view.indexes):
                self.b.execute(self.store._next_index_sql(self.view, definition, i))
        self.b.commit()

    def copy(self) -> None:
        """(a) The staging table from the refreshed rollups and the decay table, indexed."""
        a, stage = self.a, sql.Identifier(self.stage)
        a.execute(_c("create_stage", stage=stage))
        a.execute(_q("copy_join_plan"))
        self.filled = a.execute(_c("fill_stage", stage=stage, decay=sql.Identifier(self.decay_tbl),
                                   rollups=self.rollups), {"as_of": self.as_of}).rowcount
        a.execute(_c("index_stage", stage=stage, check=sql.Identifier(f"{self.stage}_as_of"), as_of=self.lit_as_of))
        a.execute(_c("drop_table", part=sql.Identifier(self.decay_tbl)))
        a.commit()

    def analyze_stage(self) -> None:
        """(b) Statistics of the stage."""
        self.b.execute(_c("analyze", table=sql.Identifier("feature_store", self.stage)))
        self.b.commit()

    def swap_view(self) -> None:
        """(a) The rebuilt view replaces the live one; without its lock, a concurrent refresh instead."""
        if self.mode == "swap" and not self.store._swap_view(self.a, self.view):
            log.warning("the rollup view swap could not get its lock: refreshing CONCURRENTLY instead",
                        extra={"run_id": self.run_id, "attempts": self.store.swap.attempts})
            self.a.execute(_c("drop_view_if_exists", view=self.nxt))
            self.a.execute(_q("refresh_rollups"))
            self.a.commit()
            self.mode = "concurrently"

    def publish(self, keep_from: date) -> tuple[int, list[date]]:
        """(a) One short transaction: the date's partition, expired ones dropped, catalogue and ledger."""
        a, store = self.a, self.store
        # Table lock first, advisory swap lock second: if the swap has to wait for a
        # reader, it waits before it holds the lock that erasures take.
        a.execute(_q("lock_catalogue"))
        a.execute(_q("swap_lock"), {"key": SWAP_LOCK_KEY})
        pruned = a.execute(_c("prune_stage", stage=sql.Identifier(self.stage)), self.privacy.params()).rowcount
        rows = max(0, self.filled - max(0, pruned))
        store._drop_partition(a, self.as_of)
        a.execute(_c("attach_partition", stage=sql.Identifier(self.stage), as_of=self.lit_as_of))
        a.execute(_c("rename_stage", stage=sql.Identifier(self.stage),
                     part=sql.Identifier(partition_name(self.as_of))))
        a.execute(_q("upsert_snapshot"), {"as_of": self.as_of, "as_of_ts": self.as_of_ts,
                                           "computed_at": self.computed_at, "row_count": rows, "run_id": self.run_id})
        dropped = [r[0] for r in a.execute(_q("expired_snapshots"), {"keep_from": keep_from}).fetchall()]
        for d in dropped:
            store._drop_partition(a, d)
            a.execute(_q("delete_snapshot"), {"as_of": d})
        # The ledger row's outcome commits with the snapshot itself: either both or neither.
        a.execute(_q("finish_run"), {"run_id": self.run_id, "status": "succeeded", "row_count": rows,
                                     "dropped": len(dropped), "error": None})
        a.commit()
        return rows, dropped


def erase_user_features_sync(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> int:
    """Delete every feature-store row of ``user_id`` in the caller's transaction; returns rows deleted."""
    with wrap_exceptions():
        conn.execute(_q("erase_lock"), {"key": SWAP_LOCK_KEY})
        return conn.execute(_q("erase_user_features"), {"user_id": user_id}).rowcount


async def erase_user_features(conn: AsyncConnection[Any], user_id: uuid.UUID) -> int:
    """Delete every feature-store row of ``user_id`` in the caller's transaction; returns rows deleted.

    For user erasure (issue 6).  It waits for a snapshot swap in progress (advisory lock), so
    a snapshot built before the erase cannot bring the user's rows back.  The caller must
    also delete (or de-personalize) the ``user_profile`` row in the same transaction: the
    swap re-checks profiles, which covers a snapshot being built while the erase runs.
    """
    with wrap_exceptions():
        await conn.execute(_q("erase_lock"), {"key": SWAP_LOCK_KEY})
        cur = await conn.execute(_q("erase_user_features"), {"user_id": user_id})
        return cur.rowcount
