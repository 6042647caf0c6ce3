"""PostgreSQL side of the nightly job and the feature store (``feature_store`` schema).

The job runs on plain (synchronous) psycopg connections: it is a batch process with a few
long statements, and two of them run at once on two connections (the rollup refresh and
the decay pass, sharing one exported snapshot).  Every driver error leaves through
``wrap_exceptions`` so the use case (``personalization.nightly.job``) never sees psycopg.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, assert_never

import psycopg
import pyarrow as pa
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from personalization.config import RefreshMode
from personalization.core.decay import DecayConfig
from personalization.errors import StoreError, StoreUnavailable
from personalization.store.db import wrap_exceptions
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
        stage = f"_stage_{run_id}"
        decay_tbl = f"_decay_{run_id}"
        scale, half_life = decay_sql(decay)
        at = sql.Literal(as_of_ts)
        lit_as_of = sql.SQL("{}::date").format(sql.Literal(as_of.isoformat()))
        with self.connect(autocommit=False) as a, self.connect(autocommit=False) as b, wrap_exceptions():
            a.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            row = a.execute(_q("export_snapshot")).fetchone()
            assert row is not None
            snapshot, computed_at = row[0], row[1]
            b.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            b.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))

            view = self._view_info(a)
            mode: RefreshMode = self.refresh_mode
            if mode == "swap" and view.has_dependents:
                log.warning("user_signal_rollups has dependent views: refreshing CONCURRENTLY instead of swapping",
                            extra={"run_id": run_id})
                mode = "concurrently"
            nxt = view.ident(NEXT_VIEW)
            rollups = nxt if mode == "swap" else view.ident()

            def decay_pass() -> None:
                b.execute(_c("create_decay", decay=sql.Identifier(decay_tbl), scale=scale, half_life=half_life, at=at,
                             levels=sql.SQL("{}::text[]").format(sql.Literal(list(privacy.levels))),
                             null_ok=sql.Literal(privacy.null_ok)))
                # Statistics for the copy's join: without them the planner sorts both sides
                # for a merge join (2-3x slower than the hash join it picks with them).
                b.execute(_c("analyze", table=sql.Identifier("feature_store", decay_tbl)))
                b.commit()

            def refresh() -> None:
                if mode == "swap":
                    # A leftover of a killed run was dropped by drop_leftovers before this run.
                    a.execute(_c("create_next_view", next=nxt, definition=sql.SQL(view.definition)))
                    a.execute(_c("analyze", table=nxt))
                elif mode == "concurrently":
                    a.execute(_q("refresh_rollups"))
                else:
                    assert_never(mode)
                a.commit()

            step("refresh")
            _parallel(decay_pass, refresh, "nightly-decay")

            def index_next() -> None:
                if mode == "swap":
                    for i, (_name, definition) in enumerate(view.indexes):
                        b.execute(self._next_index_sql(view, definition, i))
                b.commit()

            def copy() -> None:
                a.execute(_c("create_stage", stage=sql.Identifier(stage)))
                a.execute(_q("copy_join_plan"))
                filled = a.execute(_c("fill_stage", stage=sql.Identifier(stage), decay=sql.Identifier(decay_tbl),
                                      rollups=rollups), {"as_of": as_of}).rowcount
                a.execute(_c("index_stage", stage=sql.Identifier(stage), check=sql.Identifier(f"{stage}_as_of"),
                             as_of=lit_as_of))
                a.execute(_c("drop_table", part=sql.Identifier(decay_tbl)))
                a.commit()
                counts["filled"] = filled

            counts: dict[str, int] = {}
            step("copy")
            _parallel(index_next, copy, "nightly-index")

            def analyze_stage() -> None:
                b.execute(_c("analyze", table=sql.Identifier("feature_store", stage)))
                b.commit()

            def swap_view() -> None:
                nonlocal mode
                if mode == "swap" and not self._swap_view(a, view):
                    log.warning("the rollup view swap could not get its lock: refreshing CONCURRENTLY instead",
                                extra={"run_id": run_id, "attempts": self.swap.attempts})
                    a.execute(_c("drop_view_if_exists", view=nxt))
                    a.execute(_q("refresh_rollups"))
                    a.commit()
                    mode = "concurrently"

            step("swap")
            _parallel(analyze_stage, swap_view, "nightly-analyze")
            # Table lock first, advisory swap lock second: if the swap has to wait for a
            # reader, it waits before it holds the lock that erasures take.
            a.execute(_q("lock_catalogue"))
            a.execute(_q("swap_lock"), {"key": SWAP_LOCK_KEY})
            pruned = a.execute(_c("prune_stage", stage=sql.Identifier(stage)), privacy.params()).rowcount
            rows = max(0, counts["filled"] - max(0, pruned))
            part = partition_name(as_of)
            self._drop_partition(a, as_of)
            a.execute(_c("attach_partition", stage=sql.Identifier(stage), as_of=lit_as_of))
            a.execute(_c("rename_stage", stage=sql.Identifier(stage), part=sql.Identifier(part)))
            a.execute(_q("upsert_snapshot"), {"as_of": as_of, "as_of_ts": as_of_ts, "computed_at": computed_at,
                                               "row_count": rows, "run_id": run_id})
            dropped = [r[0] for r in a.execute(_q("expired_snapshots"), {"keep_from": keep_from}).fetchall()]
            for d in dropped:
                self._drop_partition(a, d)
                a.execute(_q("delete_snapshot"), {"as_of": d})
            # The ledger row's outcome commits with the snapshot itself: either both or neither.
            a.execute(_q("finish_run"), {"run_id": run_id, "status": "succeeded", "row_count": rows,
                                         "dropped": len(dropped), "error": None})
            a.commit()
        return BuildResult(rows=rows, dropped=dropped, computed_at=computed_at, refresh=mode)

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

    @contextmanager
    def pit_session(self) -> Iterator[PitSession]:
        """A session with the entities temp tables, for a chunked point-in-time export.

        It runs on an ADBC connection: results arrive as Arrow tables decoded in C++ from
        binary COPY, which keeps hundreds of thousands of feature rows out of per-row Python.
        """
        import adbc_driver_postgresql.dbapi as adbc  # type: ignore[import-untyped]

        with _wrap_adbc():
            conn = adbc.connect(self.database_url, autocommit=True)
        try:
            with _wrap_adbc():
                cur = conn.cursor()
                cur.execute(f"SET work_mem = '{self.work_mem}'")
                cur.execute(_q("create_entities"))
                cur.execute(_q("create_assigned"))
            yield PitSession(cur)
        finally:
            conn.close()


@contextmanager
def _wrap_adbc() -> Iterator[None]:
    import adbc_driver_manager

    try:
        yield
    except adbc_driver_manager.OperationalError as exc:
        raise StoreUnavailable(str(exc).splitlines()[0]) from exc
    except adbc_driver_manager.Error as exc:
        raise StoreError(str(exc).splitlines()[0]) from exc


class PitSession:
    """Joins chunks of entity rows with the snapshot valid at each row's timestamp."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def join(self, entities: pa.Table, privacy: PrivacyFilter) -> tuple[pa.Table, pa.Table]:
        """Join one chunk of ``row_no, user_id (text), ts`` rows.

        Returns ``row_no, as_of, computed_at`` for every entity row in ``row_no`` order, and
        ``row_no, content_type, signal_type, event_count, total_weight, last_seen_at,
        decayed_weight`` for every feature row of the assigned snapshots (unordered).  One
        REPEATABLE READ transaction per chunk (both results see the same catalogue), never
        one for the whole export: a transaction open that long would hold up the nightly swap.
        """
        assign = _c("assign_snapshots", levels=sql.SQL("{}::text[]").format(sql.Literal(list(privacy.levels))),
                    null_ok=sql.Literal(privacy.null_ok)).as_string(None)
        cur = self.cur
        with _wrap_adbc():
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                cur.execute("TRUNCATE pit_entities, pit_assigned")
                cur.adbc_ingest("pit_entities", entities, mode="append", temporary=True)
                cur.execute("ANALYZE pit_entities")
                cur.execute(assign)
                cur.execute("ANALYZE pit_assigned")
                cur.execute(_q("select_assigned"))
                assigned = cur.fetch_arrow_table()
                cur.execute(_q("select_features"))
                features = cur.fetch_arrow_table()
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
        return assigned, features


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
