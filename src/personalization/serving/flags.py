"""Feature flags: rules in PostgreSQL, per-user results cached under ``feature_flag:{flag}:{user_id}``.

The cached value is ``"<0|1>:<reason>:<rules version>:<preferences generation>"``,
followed by ``":e"`` once the reader's exposure for that rules version is durable in
PostgreSQL (experiments); its first character is the on/off state for any other reader
of the spec's key.  With an exposure sink, a value without the mark is re-evaluated and
its exposure recorded (a group commit shared by concurrent reads), so a steady-state
read that hits the cache costs the experiments nothing, and no value is marked before
its exposure committed.
A cached value is used only while both tags are current: a rule change publishes a
new version (``feature_flag_version:{flag}``) and a profile or trait change a new
generation, so either takes effect at once for every user, not after the 24 h TTL.
Evaluation itself is :func:`personalization.core.flags.evaluate` (pure).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from personalization.cache.serving import FlagState, ServingCache
from personalization.core.experiments import Exposure, ExposureSink, exposure_time
from personalization.core.flags import FLAG_NAME_PATTERN, Decision, FlagRules, FlagRulesIn, evaluate
from personalization.errors import CacheUnavailable, FieldError, InvalidInput, NotFound
from personalization.serving.guard import CacheGuard
from personalization.serving.preferences import Preferences
from personalization.store.serving import ServingStore

_FLAG_NAME = re.compile(FLAG_NAME_PATTERN)


@dataclass(frozen=True)
class FlagResult:
    """One flag for one user: its state, why, the rules version, and where it came from."""

    flag: str
    user_id: uuid.UUID
    on: bool
    reason: str
    version: int
    source: Literal["cache", "evaluated"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "user_id": str(self.user_id),
            "enabled": self.on,
            "variant": "on" if self.on else "off",
            "reason": self.reason,
            "version": self.version,
            "source": self.source,
        }


_EXPOSED_MARK = "e"


def encode_value(decision: Decision, version: int, generation: str, *, exposed: bool = False) -> str:
    """The string stored under the spec's flag key (``exposed``: the exposure is durable)."""
    value = f"{int(decision.on)}:{decision.reason}:{version}:{generation}"
    return f"{value}:{_EXPOSED_MARK}" if exposed else value


def decode_value(value: str) -> tuple[bool, str, int, str, bool] | None:
    """(on, reason, version, generation, exposed) of a cached value, or None if it is not ours."""
    parts = value.split(":", 4)
    if len(parts) not in (4, 5) or parts[0] not in ("0", "1") or not parts[2].isdigit():
        return None
    if len(parts) == 5 and parts[4] != _EXPOSED_MARK:
        return None
    return parts[0] == "1", parts[1], int(parts[2]), parts[3], len(parts) == 5


def exposed_in_cache(state: FlagState | None, version: int) -> bool:
    """True when the cached value is current (rules ``version``, the reader's generation) and marked.

    The generation must match too: a profile delete replaces it, so a reader re-created
    under the same id is recorded again instead of trusting the old reader's mark.
    """
    if state is None or state.cached is None:
        return False
    parsed = decode_value(state.cached)
    return parsed is not None and parsed[2] == version and parsed[3] == state.generation and parsed[4]


def check_flag_name(flag: str) -> None:
    """InvalidInput naming the ``flag`` path field unless ``flag`` is a valid flag name."""
    if not _FLAG_NAME.fullmatch(flag):
        raise InvalidInput(
            [FieldError(["path", "flag"], "must match ^[a-z0-9][a-z0-9_.-]{0,63}$", "string_pattern_mismatch")]
        )


def _rules_from_row(row: dict[str, Any]) -> FlagRules:
    overrides = {uuid.UUID(k): bool(v) for k, v in (row.get("overrides") or {}).items()}
    return FlagRules.model_validate({**row, "overrides": overrides})


class FlagService:
    """Read and change flag rules; evaluate flags for users with caching."""

    def __init__(
        self,
        store: ServingStore,
        cache: ServingCache,
        guard: CacheGuard,
        preferences: Callable[[uuid.UUID], Awaitable[Preferences]],
        exposures: ExposureSink | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.guard = guard
        self._preferences = preferences
        # Where first exposures go (experiments); None records nothing (library use, tools).
        self.exposures = exposures
        # Rules per flag, as last loaded; reused while no newer version is published.
        self._rules: dict[str, FlagRules] = {}

    async def rules(self, flag: str, known_version: int | None = None) -> FlagRules:
        """The flag's rules, at least as new as ``known_version``; NotFound for an unknown flag.

        ``known_version`` is the version published in Redis; without it (Redis
        unavailable or the key expired) the rules are read from PostgreSQL.
        """
        check_flag_name(flag)
        cached = self._rules.get(flag)
        if cached is not None and known_version is not None and cached.version >= known_version:
            return cached
        row = await self.store.get_flag(flag)
        if row is None:
            raise NotFound("flag", "flag", flag)
        rules = _rules_from_row(row)
        self._rules[flag] = rules
        if known_version is None or rules.version > known_version:
            await self._publish(flag, rules.version)
        return rules

    async def _publish(self, flag: str, version: int) -> None:
        if not self.guard.up:
            self.guard.defer_flag_version(flag, version)
            return
        try:
            await self.cache.publish_rules_version(flag, version)
        except CacheUnavailable as exc:
            self.guard.trip("flag_version", exc)
            self.guard.defer_flag_version(flag, version)

    async def put_rules(self, flag: str, body: FlagRulesIn) -> FlagRules:
        """Replace the flag's rules and overrides (creating the flag); effective for everyone at once."""
        check_flag_name(flag)
        missing = await self.store.missing_users(list(body.overrides))
        if missing:
            raise InvalidInput(
                [FieldError(["body", "overrides", str(u)], "unknown user", "not_found") for u in missing], 422
            )
        version = await self.store.put_flag(flag, body.model_dump(mode="json"), body.overrides)
        await self._publish(flag, version)
        return await self.rules(flag, version)

    async def get(self, flag: str, user_id: uuid.UUID) -> FlagResult:
        """The flag for one user: from the cache while its tags are current, else evaluated and cached."""
        check_flag_name(flag)
        state: FlagState | None = None
        if self.guard.up:
            try:
                state = await self.cache.flag_state(flag, user_id)
            except CacheUnavailable as exc:
                self.guard.trip("flag", exc)
        else:
            self.guard.fallback("flag")
        return await self.resolve(flag, user_id, state)

    async def resolve(
        self, flag: str, user_id: uuid.UUID, state: FlagState | None, prefs: Preferences | None = None
    ) -> FlagResult:
        """Use ``state`` (read from Redis, None when unavailable) or evaluate and cache the flag.

        ``prefs``, when given, must have been read after ``state.generation``.
        """
        if state is not None and state.cached is not None and state.rules_version is not None:
            parsed = decode_value(state.cached)
            if (
                parsed is not None
                and parsed[2] == state.rules_version
                and parsed[3] == state.generation
                and (parsed[4] or self.exposures is None)
            ):
                return FlagResult(flag, user_id, parsed[0], parsed[1], parsed[2], "cache")
        check_flag_name(flag)
        if prefs is None:
            # The user first: an unknown user is a 404 that leaves nothing in Redis.
            prefs = await self._preferences(user_id)
        rules = await self.rules(flag, state.rules_version if state is not None else None)
        decision = evaluate(rules, flag, user_id, prefs.attributes())
        exposed = await self.expose(
            flag, user_id, decision, rules.version, prefs.privacy_level, degraded=state is None
        )
        if state is not None and self.guard.up:
            value = encode_value(decision, rules.version, state.generation, exposed=exposed)
            try:
                await self.cache.set_flag(flag, user_id, value)
            except CacheUnavailable as exc:
                self.guard.trip("flag_set", exc)
        return FlagResult(flag, user_id, decision.on, decision.reason, rules.version, "evaluated")

    async def expose(
        self,
        flag: str,
        user_id: uuid.UUID,
        decision: Decision,
        version: int,
        privacy_level: str | None,
        *,
        degraded: bool = False,
    ) -> bool:
        """Record the evaluation as an exposure; True once it is durable (False: not recorded).

        Returns after the exposure's group commit, so the caller may cache the value as
        exposed and answer the read: an acknowledged variant always has its exposure.
        ``degraded`` (no Redis state for the read) lets the recorder's in-process memory
        stand in for the cached mark.
        """
        if self.exposures is None:
            return False
        at = exposure_time(privacy_level, datetime.now(UTC))
        variant: Literal["on", "off"] = "on" if decision.on else "off"
        exposure = Exposure(flag, user_id, variant, decision.reason, version, at)
        return await self.exposures.record(exposure, use_memory=degraded)
