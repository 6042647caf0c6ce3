"""The recommender use case: what should this reader (or session, or content page) show next?

Per request: the read path's state of the reader (preferences, the ``personalization``
flag through :class:`~personalization.serving.flags.FlagService`, the online learner's
embedding, the session's recent content: one Redis round trip, PostgreSQL when Redis is
down) and the reader's most recent events from PostgreSQL (an indexed read, so a new
bookmark counts at once, without Kafka).  Sources, merging and ranking are
:mod:`personalization.recommend.engine`; the models come from :mod:`.loader`.

Variants: ``personalized``; ``non_personalized`` (flag off: trending and continue
reading; privacy level forbids personalization: trending only, nothing derived from the
reader); ``session`` for anonymous readers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from personalization.config import RecommendSettings
from personalization.core.decay import DecayConfig
from personalization.errors import FieldError, InvalidInput, NotFound
from personalization.recommend.engine import MODE_SOURCES, Mode, policy_from, profile_traits, recommend
from personalization.recommend.history import HistoryEvent, ReaderHistory, fold_history
from personalization.recommend.loader import ModelLoader
from personalization.recommend.models import Trending
from personalization.recommend.ranker import RankedItem
from personalization.recommend.sources import Context, Models, neighbour_scores
from personalization.serving.flags import FlagResult
from personalization.serving.service import ServingService
from personalization.store.db import Database
from personalization.store.recommend import RecommendStore

Variant = Literal["personalized", "non_personalized", "session"]
MAX_LIMIT = 100
MAX_WINDOW_DAYS = 365


@dataclass(frozen=True)
class Recommendations:
    """A recommendation list and how it was made."""

    variant: Variant
    reason: str
    items: list[RankedItem]
    user_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    content_id: str | None = None
    flag: FlagResult | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user_id is not None:
            out["user_id"] = str(self.user_id)
        if self.session_id is not None:
            out["session_id"] = str(self.session_id)
        if self.content_id is not None:
            out["content_id"] = self.content_id
        out["variant"] = self.variant
        out["reason"] = self.reason
        if self.flag is not None:
            out["flag"] = {"enabled": self.flag.on, "reason": self.flag.reason, "version": self.flag.version}
        # orjson renders the dataclasses natively.
        out["items"] = self.items
        return out


def limit_blas_threads(n: int) -> None:
    """Cap the process's BLAS thread pool (settings.blas_threads); a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - the recommend extra brings it
        return
    threadpool_limits(n, "blas")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput([FieldError(["query", "limit"], f"must be between 1 and {MAX_LIMIT}", "range")], 422)


class Recommender:
    """Recommendations for readers, sessions and content pages; popular content."""

    def __init__(self, db: Database, serving: ServingService, settings: RecommendSettings, *,
                 decay: DecayConfig, embedding_dim: int | None = None) -> None:
        self.settings = settings
        if self.settings.blas_threads:
            limit_blas_threads(self.settings.blas_threads)
        self.serving = serving
        self.store = RecommendStore(db)
        self.decay = decay
        self.policy = policy_from(self.settings)
        self.loader = ModelLoader(self.store, self.settings, decay, embedding_dim or serving.embedding_dim)
        self._popular: dict[tuple[str | None, int], tuple[float, Trending]] = {}
        self._popular_lock = asyncio.Lock()

    async def models(self) -> Models:
        """The current models (loaded on first use, refreshed in the background)."""
        return await self.loader.current()

    def _fold(self, models: Models, events: list[HistoryEvent], now: float) -> ReaderHistory:
        return fold_history(events, models.catalog, self.decay, now,
                            consumed_types=self.settings.consumed_signal_types,
                            skip_types=self.settings.skip_signal_types)

    def _context(self, models: Models, history: ReaderHistory, excluded: set[int], content_type: str | None,
                 **extra: Any) -> Context:
        return Context(models, history, excluded, content_type=content_type,
                       seeds=[(p, cid) for p, cid, _ in history.recent_positive],
                       seed_limit=self.settings.seeds, continue_next=self.settings.continue_next, **extra)

    async def for_user(self, user_id: uuid.UUID, limit: int = 10, *, session_id: uuid.UUID | None = None,
                       content_type: str | None = None, allow_repeats: bool = False) -> Recommendations:
        """The reader's list (module docstring for the variants); NotFound for an unknown user."""
        _check_limit(limit)
        reader = await self.serving.reader_state(user_id, session_id)
        models = await self.models()
        catalog = models.catalog
        mode: Mode
        if reader.reason == "privacy":
            mode, history = "trending_only", ReaderHistory()
        else:
            mode = "personalized" if reader.personalize else "non_personalized"
            rows = await self.store.user_history(user_id, self.settings.history_events)
            history = self._fold(models, [HistoryEvent(*r) for r in rows], time.time())
        excluded = {p for c in reader.recent if (p := catalog.passage_of_content(c)) is not None}
        excluded |= history.skipped
        if not allow_repeats:
            excluded |= history.consumed
        prefs = reader.preferences
        traits = []
        user_vector = None
        if mode == "personalized":
            traits = profile_traits(prefs.profile, ((t, v, 1.0) for t, v in prefs.traits.items()))
            user_vector = reader.embedding
            if user_vector is None and reader.reason == "no_embedding" and not history.empty:
                # Redis's copy expired (or was never warmed): the learner's durable one.
                user_vector = await self.serving.durable_embedding(user_id)
        ctx = self._context(models, history, excluded, content_type, user_vector=user_vector, traits=traits)
        preferred = prefs.profile.get("preferred_translation")
        translations = ([preferred] if preferred else []) + history.translation_order()
        items = recommend(ctx, MODE_SOURCES[mode], self.policy, self.settings, limit, translations)
        variant: Variant = "personalized" if mode == "personalized" else "non_personalized"
        reason = "personalized" if mode == "personalized" else reader.reason
        return Recommendations(variant, reason, items, user_id=user_id, flag=reader.flag)

    async def for_session(self, session_id: uuid.UUID, limit: int = 10, *,
                          content_type: str | None = None) -> Recommendations:
        """An anonymous reader's list, from the session's recent content (newest first)."""
        _check_limit(limit)
        recent = (await self.serving.recent_content(session_id)).content_ids
        models = await self.models()
        now = time.time()
        # Newest first: one second apart keeps their order for seeds and series progress.
        history = self._fold(models, [HistoryEvent(c, "view", 1.0, now - i) for i, c in enumerate(recent)], now)
        excluded = set(history.weights) | history.consumed
        ctx = self._context(models, history, excluded, content_type)
        items = recommend(ctx, MODE_SOURCES["session"], self.policy, self.settings, limit,
                          history.translation_order())
        return Recommendations("session", "session" if recent else "no_history", items, session_id=session_id)

    async def similar(self, content_id: str, limit: int = 10) -> Recommendations:
        """Item to item; never the item itself nor another translation of it.  NotFound for an unknown id."""
        _check_limit(limit)
        models = await self.models()
        catalog = models.catalog
        p = catalog.passage_of_content(content_id)
        if p is None:
            raise NotFound("content", "content_id", content_id)
        ctx = Context(models, ReaderHistory())
        scores = neighbour_scores(ctx, p, max(limit * 3, self.settings.min_candidates))
        scores.pop(p, None)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        translation = catalog.translation[catalog.content_index[content_id]]
        prefs = [translation] if translation else []
        items = [RankedItem(catalog.content_ids[catalog.pick_translation(q, prefs)], round(s, 6),
                            [f"similar_to:{content_id}"]) for q, s in ranked]
        return Recommendations("non_personalized", "similar", items, content_id=content_id)

    async def popular(self, limit: int = 10, *, content_type: str | None = None,
                      window_days: int | None = None) -> Recommendations:
        """Time-decayed engagement of every reader over ``window_days`` (default the trending window)."""
        _check_limit(limit)
        window = window_days if window_days is not None else self.settings.trending_window_days
        if not 1 <= window <= MAX_WINDOW_DAYS:
            raise InvalidInput([FieldError(["query", "window_days"], f"must be between 1 and {MAX_WINDOW_DAYS}",
                                           "range")], 422)
        models = await self.models()
        catalog = models.catalog
        trending = models.trending
        if content_type is not None or window != self.settings.trending_window_days:
            trending = await self._popular_for(models, content_type, window)
        items: list[RankedItem] = []
        for p in trending.order.tolist():
            if content_type is not None and catalog.passage_type[p] != content_type:
                continue
            items.append(RankedItem(catalog.label(p), round(float(trending.scores[p]), 6), ["trending"]))
            if len(items) >= limit:
                break
        return Recommendations("non_personalized", "popular", items)

    async def _popular_for(self, models: Models, content_type: str | None, window: int) -> Trending:
        key = (content_type, window)
        hit = self._popular.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.settings.trending_refresh_s and hit[1].scores.size == \
                models.catalog.size:
            return hit[1]
        async with self._popular_lock:
            hit = self._popular.get(key)
            if hit is None or time.monotonic() - hit[0] >= self.settings.trending_refresh_s:
                trending = await self.loader.trending(models.catalog, content_type, window)
                if len(self._popular) > 256:  # bounded: content types x windows asked for
                    self._popular.clear()
                self._popular[key] = (time.monotonic(), trending)
                return trending
            return hit[1]

    def status(self) -> dict[str, Any]:
        """What is loaded (for health and the CLI)."""
        m = self.loader.models
        if m is None:
            return {"loaded": False}
        index = m.embedding_index
        return {"loaded": True, "passages": m.catalog.size, "content_items": len(m.catalog.content_ids),
                "index": index.kind if index else None, "index_bytes": index.memory_bytes if index else 0,
                "cf": m.cf is not None, "neighbours": m.neighbours is not None,
                "versions": self.loader.versions, "at": datetime.now(UTC).isoformat()}
