"""The write path for behavioural events: validation, dedup, group commit, session recents.

Flow of one group (see ``GroupCommitter``): many concurrent ``ingest`` calls are
coalesced; in one transaction the referenced profiles are locked (``FOR KEY
SHARE``, so a concurrent delete cannot break the COPY), privacy levels applied,
client event ids claimed in Redis (``ZADD NX`` on ``user:{id}:signals``), the rows
written with one text-format ``COPY``, and the transaction committed.  Only then are
the callers released and the session recent-content lists updated.  If the
commit fails the claimed ids are released again, so a retry is not mistaken for
a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from personalization import metrics
from personalization.cache import keys
from personalization.cache.events import EventCache
from personalization.config import Settings
from personalization.core.fast_events import (
    CLIENT_ID,
    CONTENT_ID,
    IDX,
    METADATA,
    SESSION_ID,
    SIGNAL_TYPE,
    TS,
    USER_ID,
    ValidEvent,
    from_models,
)
from personalization.core.models import EventIn, check_event_limits
from personalization.core.privacy import ANONYMOUS_POLICY, PrivacyPolicy, policy_for
from personalization.errors import CacheUnavailable, FieldError, InvalidInput, NotFound
from personalization.ingest.validation import RejectedEvent, limits_from, parse_events, parse_events_json
from personalization.store.db import Database
from personalization.store.events import copy_event_lines, copy_line, lock_users

log = logging.getLogger(__name__)

_ANONYMOUS = str(keys.ANONYMOUS_USER)


@dataclass
class IngestResult:
    """Outcome of one batch: every index is in exactly one list (or counted as accepted)."""

    accepted: int = 0
    duplicates: list[int] = field(default_factory=list)
    suppressed: list[int] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)
    dedup_available: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "suppressed": self.suppressed,
            "rejected": [r.as_dict() for r in self.rejected],
            "dedup": "ok" if self.dedup_available else "unavailable",
        }


@dataclass
class _Request:
    events: list[ValidEvent]
    atomic: bool
    future: asyncio.Future[IngestResult]
    result: IngestResult = field(default_factory=IngestResult)


def _admit(
    group: list[_Request], policies: dict[str, PrivacyPolicy]
) -> list[tuple[_Request, ValidEvent, PrivacyPolicy]]:
    """The group's events to store, with the policy of each one's user.

    Events of a level that stores none are suppressed; events of an unknown user are
    rejected (their request fails with NotFound when it is atomic).
    """
    to_store: list[tuple[_Request, ValidEvent, PrivacyPolicy]] = []
    for req in group:
        unknown: list[ValidEvent] = []
        accepted: list[tuple[_Request, ValidEvent, PrivacyPolicy]] = []
        for e in req.events:
            uid = e[USER_ID]
            if uid is None:
                pol = ANONYMOUS_POLICY
            else:
                found = policies.get(uid)
                if found is None:
                    unknown.append(e)
                    continue
                pol = found
            if not pol.store_events:
                req.result.suppressed.append(e[IDX])
                continue
            accepted.append((req, e, pol))
        if unknown:
            metrics.EVENTS_REJECTED.labels("unknown_user").inc(len(unknown))
            if req.atomic:
                i, ghost = unknown[0][IDX], unknown[0][USER_ID]
                req.future.set_exception(NotFound("user", f"events[{i}].user_id", str(ghost), {"index": i}))
                continue
            for e in unknown:
                i = e[IDX]
                missing = FieldError(["body", "events", i, "user_id"], "user does not exist", "not_found")
                req.result.rejected.append(RejectedEvent(i, [missing]))
        to_store.extend(accepted)
    return to_store


class GroupCommitter:
    """Coalesces concurrent batches into one transaction and one COPY.

    A single flusher task takes everything pending (up to ``max_rows``) once the
    first request has waited ``window_ms`` or the rows reach ``max_rows``; while a
    flush runs, new requests queue for the next one.  Callers are released only
    after commit.  ``close`` drains what is pending.
    """

    def __init__(self, db: Database, cache: EventCache, settings: Settings) -> None:
        self._db = db
        self._cache = cache
        self._settings = settings
        self._view_types = frozenset(settings.ingest.view_signal_types)
        self._pending: deque[_Request] = deque()
        self._pending_rows = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the flusher task on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        """Flush everything pending, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, events: list[ValidEvent], atomic: bool) -> IngestResult:
        """Queue one validated batch and wait until it is committed (or failed)."""
        if self._closing:
            raise RuntimeError("ingest is shutting down")
        self.start()
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(events, atomic, fut))
        self._pending_rows += len(events)
        self._wakeup.set()
        return await fut

    async def _run(self) -> None:
        window = self._settings.ingest.group_commit_window_ms / 1000.0
        max_rows = self._settings.ingest.group_commit_max_rows
        concurrency = self._settings.ingest.group_commit_concurrency
        split_rows = self._settings.ingest.group_commit_split_rows
        # Up to ``group_commit_concurrency`` groups are in flight at once, so the
        # Python work of one group overlaps the Redis and PostgreSQL waits of
        # another.  Their transactions are independent: profile locks are shared
        # (FOR KEY SHARE) and replay claims are atomic in Redis.
        slots = asyncio.Semaphore(concurrency)
        inflight: set[asyncio.Task[None]] = set()
        carry = False  # requests were left for an idle flusher: send them without a window
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closing:
                    await asyncio.gather(*inflight, return_exceptions=True)
                    return
                continue
            # Give concurrent callers a short window to join, unless the group is full.
            if window > 0 and not carry and self._pending_rows < max_rows and not self._closing:
                deadline = time.monotonic() + window
                while self._pending_rows < max_rows and (left := deadline - time.monotonic()) > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), left)
            # While every flusher is busy, requests keep queueing: the next group grows.
            await slots.acquire()
            # With several flushers idle, a large backlog is shared among them, so its
            # COPYs run on several PostgreSQL backends at once instead of one after
            # the other (never below ``split_rows`` rows a group; requests stay whole).
            idle = concurrency - len(inflight)
            target = max_rows
            if idle > 1 and self._pending_rows > split_rows:
                target = min(max_rows, max(split_rows, -(-self._pending_rows // idle)))
            group: list[_Request] = []
            rows = 0
            while self._pending and (not group or rows + len(self._pending[0].events) <= target):
                req = self._pending.popleft()
                group.append(req)
                rows += len(req.events)
            self._pending_rows -= rows
            task = asyncio.create_task(self._flush_or_fail(group, rows))
            inflight.add(task)

            def _done(t: asyncio.Task[None]) -> None:
                inflight.discard(t)
                slots.release()

            task.add_done_callback(_done)
            carry = bool(self._pending) and len(inflight) < concurrency
            if self._pending:
                self._wakeup.set()

    async def _flush_or_fail(self, group: list[_Request], rows: int) -> None:
        try:
            await self._flush(group)
        except Exception as exc:  # every caller must hear about the failure
            log.error("group commit of %d rows failed: %r", rows, exc)
            for req in group:
                if not req.future.done():
                    req.future.set_exception(exc)
        except BaseException as exc:  # cancelled: callers must not hang
            for req in group:
                if not req.future.done():
                    req.future.set_exception(RuntimeError(f"ingest interrupted: {exc!r}"))
            raise

    async def _flush(self, group: list[_Request]) -> None:
        started = time.perf_counter()
        claimed: dict[str, list[str]] = {}
        committed = False
        lines: list[str] = []
        views: dict[str, list[tuple[float, str]]] = {}  # session -> (occurred_at, content_id)
        duplicates = 0
        try:
            async with self._db.connection() as conn:
                user_ids = {e[USER_ID] for r in group for e in r.events}
                user_ids.discard(None)
                levels = await lock_users(conn, cast(set[str], user_ids))
                policies = {uid: policy_for(level) for uid, level in levels.items()}
                to_store = _admit(group, policies)
                dup_flags, dedup_ok = await self._claim(to_store, claimed)
                view_types = self._view_types
                for (req, e, pol), dup in zip(to_store, dup_flags, strict=True):
                    if not dedup_ok:
                        req.result.dedup_available = False
                    if dup:
                        req.result.duplicates.append(e[IDX])
                        duplicates += 1
                        continue
                    session = e[SESSION_ID] if pol.keep_session else None
                    lines.append(copy_line(e, session, e[METADATA] if pol.keep_metadata else None))
                    req.result.accepted += 1
                    if session is not None and e[SIGNAL_TYPE] in view_types:
                        seen_in = views.get(session)
                        if seen_in is None:
                            views[session] = [(e[TS], e[CONTENT_ID])]
                        else:
                            seen_in.append((e[TS], e[CONTENT_ID]))
                if lines:
                    await copy_event_lines(conn, lines)
            committed = True
        finally:
            if not committed and claimed:
                await self._release(claimed)
        metrics.EVENTS_INGESTED.inc(len(lines))
        metrics.EVENTS_DUPLICATE.inc(duplicates)
        metrics.EVENTS_SUPPRESSED.inc(sum(len(r.result.suppressed) for r in group))
        metrics.GROUP_COMMIT_ROWS.observe(len(lines))
        metrics.GROUP_COMMIT_SECONDS.observe(time.perf_counter() - started)
        if views:
            try:
                await self._cache.record_views(views)
            except CacheUnavailable as exc:
                # The events are committed; the recents list is a cache that the
                # next views rebuild.  Losing it only weakens exclusion for a while.
                log.warning("recent-content update skipped: %s", exc)
            except Exception:  # committed data must be acknowledged whatever the cache says
                log.exception("recent-content update failed")
        # Callers are released after the recents update too, so a client that
        # ingests a view and then asks for a rerank never sees the passage again.
        for req in group:
            if not req.future.done():
                req.result.rejected.sort(key=lambda r: r.index)
                req.future.set_result(req.result)

    async def _claim(
        self, items: list[tuple[_Request, ValidEvent, PrivacyPolicy]], claimed: dict[str, list[str]]
    ) -> tuple[list[bool], bool]:
        """Mark client event ids as seen; returns per item whether it is a replay."""
        flags = [False] * len(items)
        # owner -> client event id -> position in ``items`` of its first occurrence
        per: dict[str, dict[str, int]] = {}
        anonymous = _ANONYMOUS
        for n, (_, e, _) in enumerate(items):
            member = e[CLIENT_ID]
            if member is None:
                continue
            owner = e[USER_ID] or anonymous
            seen = per.get(owner)
            if seen is None:
                per[owner] = seen = {}
            if member in seen:
                flags[n] = True  # the same id twice in one group
            else:
                seen[member] = n
        if not per:
            return flags, True
        # Whole seconds: Redis keeps a small sorted set as a listpack, where a fractional
        # score is text that every ZADD re-parses entry by entry (~5x the cost of an integer).
        floor = math.floor
        payload = {
            owner: [x for m, n in seen.items() for x in (floor(items[n][1][TS]), m)] for owner, seen in per.items()
        }
        try:
            added = await self._cache.claim_event_ids(payload)
        except CacheUnavailable as exc:
            # Valid data is never lost: without Redis we store and report that
            # replays could not be checked.
            log.warning("dedup unavailable, storing without replay check: %s", exc)
            return flags, False
        pos = 0
        for owner, seen in per.items():
            got = added[pos : pos + len(seen)]
            pos += len(seen)
            if all(got):
                claimed[owner] = list(seen)
                continue
            mine = [m for m, ok in zip(seen, got, strict=True) if ok]
            if mine:
                claimed[owner] = mine
            for n, ok in zip(seen.values(), got, strict=True):
                if not ok:
                    flags[n] = True
        return flags, True

    async def _release(self, claimed: dict[str, list[str]]) -> None:
        try:
            await self._cache.release_event_ids(claimed)
        except CacheUnavailable as exc:  # pragma: no cover - both stores failing at once
            log.error("could not release claimed event ids after a failed commit: %s", exc)


class Ingestor:
    """The library entry point of event ingestion."""

    def __init__(self, db: Database, cache: EventCache, settings: Settings) -> None:
        self.settings = settings
        self.limits = limits_from(settings)
        self.committer = GroupCommitter(db, cache, settings)

    async def ingest(self, events: Sequence[EventIn | Mapping[str, Any]], *, atomic: bool = False) -> IngestResult:
        """Validate and store a batch; returns after commit.

        Raises :class:`InvalidInput` for a malformed batch (or any invalid event
        when ``atomic``), :class:`NotFound` for an unknown user when ``atomic``.
        """
        if events and all(isinstance(e, EventIn) for e in events):
            if len(events) > self.settings.ingest.max_batch_events:
                raise InvalidInput([FieldError(["events"], "batch too large", "too_long")], status=413)
            ready = [e for e in events if isinstance(e, EventIn)]
            bad = check_event_limits(ready, self.limits)
            errs = {i: [FieldError(["events", i, f], m, t) for f, m, t in v] for i, v in bad.items()}
            if errs and atomic:
                raise InvalidInput([x for v in errs.values() for x in v])
            valid = from_models((i, e) for i, e in enumerate(ready) if i not in errs)
            rejected: list[RejectedEvent] = [RejectedEvent(i, v) for i, v in sorted(errs.items())]
        else:
            payload = {
                "events": [
                    e if type(e) is dict else e.model_dump() if isinstance(e, EventIn) else dict(e) for e in events
                ]
            }
            valid, rejected = parse_events(
                payload, limits=self.limits, max_events=self.settings.ingest.max_batch_events, atomic=atomic
            )
        return await self.ingest_validated(valid, rejected, atomic=atomic)

    async def ingest_json(self, body: bytes, *, atomic: bool = False) -> IngestResult:
        """Validate and store a raw ``{"events": [...]}`` JSON body."""
        valid, rejected = parse_events_json(
            body, limits=self.limits, max_events=self.settings.ingest.max_batch_events, atomic=atomic
        )
        return await self.ingest_validated(valid, rejected, atomic=atomic)

    async def ingest_validated(
        self, valid: list[ValidEvent], rejected: list[RejectedEvent], *, atomic: bool
    ) -> IngestResult:
        """Store already-validated events (``rejected`` is carried into the result).

        A batch with no valid event is InvalidInput (422) with every event's errors: a 200
        saying ``accepted: 0`` reads like success to a client that checks only the status.
        """
        if not valid:
            if rejected:
                raise InvalidInput([err for r in rejected for err in r.errors])
            return IngestResult()
        result = await self.committer.submit(valid, atomic)
        if rejected:
            result.rejected = sorted([*rejected, *result.rejected], key=lambda r: r.index)
        return result

    async def close(self) -> None:
        """Drain pending batches."""
        await self.committer.close()
