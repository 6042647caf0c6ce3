"""The read path's use cases: preferences, login pre-warm, recent content, reranking.

(Just over 500 lines, on purpose: these use cases share one degradation guard, one reader-state
read and one cache; split apart, each would take the same half-dozen collaborators.)

Reranking (``POST /v1/users/{user_id}/rerank``):

1. The session's recent content (``session:{session_id}:recent_content``) is removed
   from the candidates and reported as ``excluded``.
2. The personalized order is served when the user's privacy level permits
   personalization, the ``personalization`` flag is on for the user, and a user
   embedding of the deployment's dimension exists.  Score:
   ``alpha * cosine(user, content) + (1 - alpha) * prior`` (a missing prior counts as
   0, a candidate without a content embedding as cosine 0); ties keep input order.
3. Otherwise the non-personalized order: prior score descending (candidates
   without one after those with one), then the popularity of the candidate's
   content type in ``user_signal_rollups`` (total weight; the rollups carry no
   content id), then input order.  The response's ``variant`` says which order was
   served and ``reason`` why, so the flag's rollout doubles as an experiment.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from personalization.cache import keys
from personalization.cache.serving import RerankState, ServingCache
from personalization.config import ServingSettings
from personalization.core import embedding as emb
from personalization.core.experiments import ExposureSink
from personalization.core.flags import evaluate
from personalization.core.privacy import policy_for
from personalization.errors import CacheUnavailable, FieldError, InvalidInput, NotFound
from personalization.serving.flags import FlagResult, FlagService, encode_value, exposed_in_cache
from personalization.serving.guard import CacheGuard
from personalization.serving.preferences import Preferences, from_hash, from_row, to_hash
from personalization.store.db import Database
from personalization.store.serving import ServingStore

log = logging.getLogger(__name__)

PERSONALIZATION = keys.PERSONALIZATION_FLAG
ContentId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"\S")]
CANDIDATE_CEILING = 10_000


class Candidate(BaseModel):
    """One candidate of a rerank call; ``score`` is the caller's prior (e.g. retrieval score, 0..1)."""

    model_config = ConfigDict(extra="forbid")

    content_id: ContentId
    score: float | None = Field(default=None, allow_inf_nan=False)


class RerankIn(BaseModel):
    """Body of ``POST /v1/users/{user_id}/rerank``."""

    model_config = ConfigDict(extra="forbid")

    session_id: uuid.UUID
    candidates: list[Candidate] = Field(min_length=1, max_length=CANDIDATE_CEILING)


@dataclass(frozen=True)
class RankedItem:
    content_id: str
    score: float
    prior: float | None
    similarity: float | None


Variant = Literal["personalized", "non_personalized"]
Reason = Literal[
    "personalized", "privacy", "flag_off", "no_embedding", "embedding_dimension_mismatch", "invalid_embedding"
]


@dataclass(frozen=True)
class RerankResult:
    user_id: uuid.UUID
    session_id: uuid.UUID
    variant: Variant
    reason: Reason
    flag: FlagResult
    items: list[RankedItem]
    excluded: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "session_id": str(self.session_id),
            "variant": self.variant,
            "reason": self.reason,
            "flag": {"enabled": self.flag.on, "reason": self.flag.reason, "version": self.flag.version},
            # orjson renders the dataclasses natively (much faster than building dicts).
            "items": self.items,
            "excluded": self.excluded,
        }


@dataclass(frozen=True)
class ReaderState:
    """What the read path knows of a reader for one request (see :meth:`ServingService.reader_state`).

    ``embedding`` is set only when personalization is permitted (privacy level and flag)
    and a usable user embedding exists; ``reason`` says why not otherwise.
    """

    preferences: Preferences
    flag: FlagResult
    reason: Reason
    embedding: emb.Vector | None
    recent: list[str]

    @property
    def personalize(self) -> bool:
        """The privacy level and the ``personalization`` flag both permit personalization."""
        return self.reason not in ("privacy", "flag_off")


@dataclass(frozen=True)
class LoginResult:
    preferences: Preferences
    flag: FlagResult
    embedding_cached: bool
    cache_warmed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": str(self.preferences.user_id),
            "preferences": self.preferences.as_dict(),
            "flags": {self.flag.flag: self.flag.as_dict()},
            "embedding": {"cached": self.embedding_cached},
            "cache_warmed": self.cache_warmed,
        }


@dataclass(frozen=True)
class RecentContent:
    session_id: uuid.UUID
    content_ids: list[str]
    source: Literal["cache", "database"]

    def as_dict(self) -> dict[str, Any]:
        return {"session_id": str(self.session_id), "content_ids": self.content_ids, "source": self.source}


class _ContentVectors:
    """In-process LRU of (unit vector or None, content type or None) per content id."""

    def __init__(self, size: int, max_age_s: float) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self.version: str | None = None
        self._cleared_at = time.monotonic()
        self._d: OrderedDict[str, tuple[emb.Vector | None, str | None]] = OrderedDict()

    def sync(self, version: str | None) -> None:
        """Drop everything after an import (new version) or when the cache is older than its max age."""
        now = time.monotonic()
        if (version is not None and version != self.version) or now - self._cleared_at > self.max_age_s:
            self._d.clear()
            self._cleared_at = now
            if version is not None:
                self.version = version

    def get(self, cid: str) -> tuple[emb.Vector | None, str | None] | None:
        v = self._d.get(cid)
        if v is not None:
            self._d.move_to_end(cid)
        return v

    def put(self, cid: str, value: tuple[emb.Vector | None, str | None]) -> None:
        if self.size <= 0:
            return
        self._d[cid] = value
        self._d.move_to_end(cid)
        while len(self._d) > self.size:
            self._d.popitem(last=False)


class ServingService:
    """Preferences, login pre-warm, flags, recent content and reranking, with Redis degradation."""

    def __init__(
        self,
        db: Database,
        cache: ServingCache,
        settings: ServingSettings,
        *,
        embedding_dim: int,
        view_signal_types: Sequence[str],
        exposures: ExposureSink | None = None,
    ) -> None:
        self.settings = settings
        # The deployment's one dimension (settings.embedding.dim), users and content alike.
        self.embedding_dim = embedding_dim
        self.store = ServingStore(db)
        self.cache = cache
        self.guard = CacheGuard(cache, self.settings.cache_retry_s)
        self.flags = FlagService(self.store, cache, self.guard, self.preferences, exposures)
        self.view_signal_types = tuple(view_signal_types)
        self._content = _ContentVectors(self.settings.content_cache_size, self.settings.content_cache_max_age_s)
        self._popularity: dict[str, float] = {}
        self._popularity_at = -1e18
        self._popularity_lock = asyncio.Lock()

    async def close(self) -> None:
        await self.guard.close()

    # ---- preferences -----------------------------------------------------------
    async def preferences(self, user_id: uuid.UUID) -> Preferences:
        """The snapshot from Redis, or from PostgreSQL on a miss (then cached); NotFound for unknown users."""
        if self.guard.up:
            try:
                raw = await self.cache.preferences(user_id)
            except CacheUnavailable as exc:
                self.guard.trip("preferences", exc)
            else:
                if raw:
                    try:
                        return from_hash(raw)
                    except ValueError:  # not written by us (or damaged): rebuild it
                        log.warning("unreadable cached preferences of %s, reloading", user_id)
                return await self._load_preferences(user_id)
        else:
            self.guard.fallback("preferences")
        return await self._load_preferences(user_id, use_cache=False)

    async def _load_preferences(self, user_id: uuid.UUID, *, use_cache: bool = True) -> Preferences:
        generation: str | None = None
        if use_cache:
            try:
                # Read before the database: the fill below lands only if no write came in between.
                generation = await self.cache.generation(user_id)
            except CacheUnavailable as exc:
                self.guard.trip("preferences_gen", exc)
        row = await self.store.preferences_snapshot(user_id, self.settings.preferences_min_confidence)
        if row is None:
            raise NotFound("user", "user_id", str(user_id))
        prefs = from_row(row)
        if generation is not None and self.guard.up:
            try:
                await self.cache.fill_preferences(user_id, generation, to_hash(prefs))
            except CacheUnavailable as exc:
                self.guard.trip("preferences_fill", exc)
        return prefs

    async def invalidate(self, user_id: uuid.UUID) -> bool:
        """After a committed profile or trait write: new generation, snapshot dropped; True when Redis took it.

        False while degraded: the invalidation is queued here (replayed before the breaker
        closes) and stays in the durable outbox for the replay of any process.
        """
        if not self.guard.up:
            self.guard.defer_invalidation(user_id)
            return False
        try:
            await self.cache.invalidate(user_id)
        except CacheUnavailable as exc:
            self.guard.trip("invalidate", exc)
            self.guard.defer_invalidation(user_id)
            return False
        return True

    # ---- login pre-warm --------------------------------------------------------
    async def login(self, user_id: uuid.UUID) -> LoginResult:
        """Load preferences, the durable user embedding and the personalization flag into Redis (one call)."""
        state = None
        if self.guard.up:
            try:
                state = await self.cache.flag_state(PERSONALIZATION, user_id)
            except CacheUnavailable as exc:
                self.guard.trip("login", exc)
        row = await self.store.preferences_snapshot(user_id, self.settings.preferences_min_confidence)
        if row is None:
            raise NotFound("user", "user_id", str(user_id))
        prefs = from_row(row)
        mode: Literal["set", "del", "none"] = "del"
        vector = b""
        if policy_for(prefs.privacy_level).personalize:
            found = await self._durable_embedding(user_id)
            if found is not None:
                mode, vector = "set", emb.encode(found)
            else:
                mode = "none"
        rules = await self.flags.rules(PERSONALIZATION, state.rules_version if state else None)
        decision = evaluate(rules, PERSONALIZATION, user_id, prefs.attributes())
        flag = FlagResult(PERSONALIZATION, user_id, decision.on, decision.reason, rules.version, "evaluated")
        # The login answers with the flag: its exposure is durable before the answer (a
        # current, marked cached value says it is already).
        exposed = exposed_in_cache(state, rules.version) or await self.flags.expose(
            PERSONALIZATION, user_id, decision, rules.version, prefs.privacy_level, degraded=state is None
        )
        warmed = False
        if state is not None and self.guard.up:
            value = encode_value(decision, rules.version, state.generation, exposed=exposed)
            try:
                warmed = await self.cache.prewarm(user_id, state.generation, to_hash(prefs), mode, vector, value)
            except CacheUnavailable as exc:
                self.guard.trip("login", exc)
        return LoginResult(prefs, flag, mode == "set", warmed)

    async def durable_embedding(self, user_id: uuid.UUID) -> emb.Vector | None:
        """The online learner's durable copy of the user's embedding (unit length), or None."""
        return await self._durable_embedding(user_id)

    async def _durable_embedding(self, user_id: uuid.UUID) -> emb.Vector | None:
        found = await self.store.user_embedding(user_id)
        if found is None:
            return None
        dim, raw = found
        try:
            if dim != self.embedding_dim:
                raise emb.EmbeddingError(f"dimension {dim}, deployment uses {self.embedding_dim}")
            return emb.normalize(emb.check(emb.decode(raw, dim), dim))
        except emb.EmbeddingError as exc:
            log.warning("ignoring durable embedding of user %s: %s", user_id, exc)
            return None

    # ---- recent content --------------------------------------------------------
    async def recent_content(self, session_id: uuid.UUID) -> RecentContent:
        """The session's recent content, newest first (PostgreSQL rebuild while Redis is unavailable)."""
        if self.guard.up:
            try:
                return RecentContent(session_id, await self.cache.recent_content(session_id), "cache")
            except CacheUnavailable as exc:
                self.guard.trip("recent", exc)
        else:
            self.guard.fallback("recent")
        return RecentContent(session_id, await self._recent_from_db(session_id), "database")

    async def _recent_from_db(self, session_id: uuid.UUID) -> list[str]:
        cap = keys.SESSION_RECENT_CONTENT.cap or 50
        return await self.store.session_recent_content(session_id, self.view_signal_types, cap)

    async def exclude_recent(self, session_id: uuid.UUID, content_ids: Sequence[str]) -> list[str]:
        """``content_ids`` without the session's recent content, order kept."""
        recent = set((await self.recent_content(session_id)).content_ids)
        return [c for c in content_ids if c not in recent]

    # ---- rerank ----------------------------------------------------------------
    def _check_candidates(self, body: RerankIn) -> None:
        limit = self.settings.rerank_max_candidates
        if len(body.candidates) > limit:
            raise InvalidInput(
                [FieldError(["body", "candidates"], f"at most {limit} candidates per call", "too_long")], 422
            )
        seen: set[str] = set()
        errors = []
        for i, c in enumerate(body.candidates):
            if c.content_id in seen:
                errors.append(FieldError(["body", "candidates", i, "content_id"], "duplicate content_id", "duplicate"))
            seen.add(c.content_id)
        if errors:
            raise InvalidInput(errors, 422)

    async def reader_state(self, user_id: uuid.UUID, session_id: uuid.UUID | None) -> ReaderState:
        """Preferences, the ``personalization`` flag, the user embedding and the session's recent content.

        One Redis round trip (PostgreSQL when Redis is unavailable); the flag goes through
        :class:`FlagService` so its hooks see every evaluation.  NotFound for an unknown user.
        """
        state: RerankState | None = None
        session = session_id if session_id is not None else keys.ANONYMOUS_USER
        if self.guard.up:
            try:
                state = await self.cache.rerank_state(user_id, session, PERSONALIZATION)
            except CacheUnavailable as exc:
                self.guard.trip("rerank", exc)
        else:
            self.guard.fallback("rerank")
        if state is not None:
            self._content.sync(state.content_version)
            prefs = self._cached_prefs(state.preferences) or await self._load_preferences(user_id)
            recent = state.recent if session_id is not None else []
        else:
            self._content.sync(None)
            prefs = await self._load_preferences(user_id, use_cache=False)
            recent = await self._recent_from_db(session_id) if session_id is not None else []
        flag = await self.flags.resolve(PERSONALIZATION, user_id, state.flag if state else None, prefs)
        reason: Reason
        user_vec: emb.Vector | None = None
        if not policy_for(prefs.privacy_level).personalize:
            reason = "privacy"
        elif not flag.on:
            reason = "flag_off"
        else:
            user_vec, reason = await self._user_vector(user_id, state)
        return ReaderState(prefs, flag, reason, user_vec, recent)

    async def rerank(self, user_id: uuid.UUID, body: RerankIn) -> RerankResult:
        """Order candidates for a user and session (see the module docstring for the rules)."""
        self._check_candidates(body)
        reader = await self.reader_state(user_id, body.session_id)
        recent_set = set(reader.recent)
        kept = [c for c in body.candidates if c.content_id not in recent_set]
        excluded = [c.content_id for c in body.candidates if c.content_id in recent_set]
        vectors = await self._content_vectors([c.content_id for c in kept])
        if reader.embedding is not None:
            items = self._personalized(kept, vectors, reader.embedding)
            variant: Variant = "personalized"
        else:
            items = await self._non_personalized(kept, vectors)
            variant = "non_personalized"
        return RerankResult(user_id, body.session_id, variant, reader.reason, reader.flag, items, excluded)

    @staticmethod
    def _cached_prefs(raw: dict[bytes, bytes]) -> Preferences | None:
        if not raw:
            return None
        try:
            return from_hash(raw)
        except ValueError:
            return None

    async def _user_vector(self, user_id: uuid.UUID, state: RerankState | None) -> tuple[emb.Vector | None, Reason]:
        dim = self.embedding_dim
        if state is None:
            # Degraded: the durable copy of the online learner.
            vec = await self._durable_embedding(user_id)
            return vec, "personalized" if vec is not None else "no_embedding"
        if state.embedding is None:
            return None, "no_embedding"
        if len(state.embedding) != 4 * dim:
            log.warning(
                "cached embedding of user %s ignored: %d bytes, expected %d", user_id, len(state.embedding), 4 * dim
            )
            return None, "embedding_dimension_mismatch"
        try:
            return emb.normalize(emb.check(emb.decode(state.embedding, dim), dim)), "personalized"
        except emb.EmbeddingError as exc:  # NaN, infinity or all zeros
            log.warning("cached embedding of user %s ignored: %s", user_id, exc)
            return None, "invalid_embedding"

    async def _content_vectors(self, ids: list[str]) -> list[tuple[emb.Vector | None, str | None]]:
        out: list[tuple[emb.Vector | None, str | None] | None] = [self._content.get(c) for c in ids]
        missing = [c for c, v in zip(ids, out, strict=True) if v is None]
        if missing:
            dim = self.embedding_dim
            fetched: dict[str, tuple[emb.Vector | None, str | None]] = {}
            for row in await self.store.content_vectors(missing, dim):
                vec = None
                if row["embedding"] is not None:
                    try:
                        vec = emb.normalize(emb.check(emb.decode(bytes(row["embedding"]), dim), dim))
                    except emb.EmbeddingError as exc:  # written by something other than the importer
                        log.warning("content %s embedding ignored: %s", row["content_id"], exc)
                fetched[row["content_id"]] = (vec, row["content_type"])
            for c in missing:
                value = fetched.get(c, (None, None))
                self._content.put(c, value)
            out = [v if v is not None else fetched.get(c, (None, None)) for c, v in zip(ids, out, strict=True)]
        return [v if v is not None else (None, None) for v in out]

    def _personalized(
        self,
        kept: list[Candidate],
        vectors: list[tuple[emb.Vector | None, str | None]],
        user_vec: emb.Vector,
    ) -> list[RankedItem]:
        alpha = self.settings.rerank_alpha
        sims: list[float | None] = [None] * len(kept)
        idx = [i for i, (v, _) in enumerate(vectors) if v is not None]
        if idx:
            mat = np.stack([vectors[i][0] for i in idx])  # type: ignore[misc]
            for i, s in zip(idx, emb.cosine_many(user_vec, mat).tolist(), strict=True):
                sims[i] = float(s)
        scored = []
        for i, c in enumerate(kept):
            prior = c.score
            score = alpha * (sims[i] or 0.0) + (1.0 - alpha) * (prior or 0.0)
            scored.append((-score, i, RankedItem(c.content_id, score, prior, sims[i])))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [t[2] for t in scored]

    async def _non_personalized(
        self, kept: list[Candidate], vectors: list[tuple[emb.Vector | None, str | None]]
    ) -> list[RankedItem]:
        popularity = await self._content_popularity()

        def key(i: int) -> tuple[int, float, float, int]:
            prior = kept[i].score
            ctype = vectors[i][1]
            pop = popularity.get(ctype, 0.0) if ctype is not None else 0.0
            return (0 if prior is not None else 1, -(prior or 0.0), -pop, i)

        order = sorted(range(len(kept)), key=key)
        return [RankedItem(kept[i].content_id, kept[i].score or 0.0, kept[i].score, None) for i in order]

    async def _content_popularity(self) -> dict[str, float]:
        if time.monotonic() - self._popularity_at < self.settings.popularity_refresh_s:
            return self._popularity
        async with self._popularity_lock:
            if time.monotonic() - self._popularity_at >= self.settings.popularity_refresh_s:
                self._popularity = await self.store.content_type_popularity()
                self._popularity_at = time.monotonic()
        return self._popularity

    # ---- health ----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Read-path state: ``ok`` with Redis, ``degraded`` while serving from PostgreSQL only."""
        st = self.guard.status()
        return {"status": "ok" if self.guard.up else "degraded", **st}
