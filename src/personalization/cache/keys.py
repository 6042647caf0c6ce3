"""Every Redis key pattern, data type, TTL and cap of the specification, in one place.

The braces of the specification's patterns are kept literally
(``user:{<uuid>}:embedding``): in Redis Cluster the text between the first ``{``
and ``}`` is the hash tag, so every key of one user (and of one session) lands on
one slot and multi-key pipelines per user stay on one node.  No other module may
spell a key or a TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from uuid import UUID

RedisType = Literal["list", "string", "hash", "zset"]


@dataclass(frozen=True)
class KeySpec:
    """One row of the specification's Redis table."""

    pattern: str
    type: RedisType
    ttl_s: int
    cap: int | None = None


HOUR: Final = 3600
DAY: Final = 24 * HOUR

SESSION_RECENT_CONTENT: Final = KeySpec("session:{{{session_id}}}:recent_content", "list", 24 * HOUR, cap=50)
USER_EMBEDDING: Final = KeySpec("user:{{{user_id}}}:embedding", "string", 6 * HOUR)
USER_PREFERENCES: Final = KeySpec("user:{{{user_id}}}:preferences", "hash", 7 * DAY)
USER_SIGNALS: Final = KeySpec("user:{{{user_id}}}:signals", "zset", 48 * HOUR)
FEATURE_FLAG: Final = KeySpec("feature_flag:{flag}:{{{user_id}}}", "string", 24 * HOUR)

ALL_KEYS: Final = (SESSION_RECENT_CONTENT, USER_EMBEDDING, USER_PREFERENCES, USER_SIGNALS, FEATURE_FLAG)

# The personalization rollout flag of the specification: feature_flag:personalization:{user_id}.
PERSONALIZATION_FLAG: Final = "personalization"

# Anonymous events (user_id NULL) that carry a client event id are deduplicated in
# the signals set of the nil UUID.
ANONYMOUS_USER: Final = UUID(int=0)


def session_recent_content(session_id: UUID | str) -> str:
    """``session:{session_id}:recent_content``: newest-first list of viewed content ids."""
    return SESSION_RECENT_CONTENT.pattern.format(session_id=session_id)


def user_embedding(user_id: UUID | str) -> str:
    """``user:{user_id}:embedding``: float32 little-endian L2-normalised vector."""
    return USER_EMBEDDING.pattern.format(user_id=user_id)


def user_preferences(user_id: UUID | str) -> str:
    """``user:{user_id}:preferences``: hash snapshot of profile and high-confidence traits."""
    return USER_PREFERENCES.pattern.format(user_id=user_id)


def user_signals(user_id: UUID | str) -> str:
    """``user:{user_id}:signals``: client event ids scored by occurred_at (whole epoch seconds)."""
    return USER_SIGNALS.pattern.format(user_id=user_id)


def feature_flag(flag: str, user_id: UUID | str) -> str:
    """``feature_flag:{flag}:{user_id}``; the spec's own key is the flag ``personalization``."""
    return FEATURE_FLAG.pattern.format(flag=flag, user_id=user_id)


# ---- read path (beside the specification's keys; not in ALL_KEYS) -----------------
# A random token replaced on every profile/trait change of the user: a cache fill
# only lands if the token is still the one read before the database read, and
# cached flag values carry it, so a stale value can never be written back.  It only
# has to outlive a read in flight (bounded by the statement timeout), so one hour is
# ample and a deleted user's token is gone soon.
USER_PREFERENCES_GEN: Final = KeySpec("user:{{{user_id}}}:preferences_gen", "string", HOUR)
# The current rules version of one flag (monotonic, from feature_flags.version).
FEATURE_FLAG_VERSION: Final = KeySpec("feature_flag_version:{flag}", "string", 30 * DAY)
# Bumped by ``personalization content import`` so serving processes drop their
# in-process content vector caches.
CONTENT_EMBEDDINGS_VERSION: Final = KeySpec("content_embeddings:version", "string", 30 * DAY)


# Written by every health probe: PING alone is answered by a Redis that refuses writes
# (out of memory, a read-only replica after a failover), so health is a small write.
# A short TTL: the key is never read and disappears when probes stop.
HEALTH_PROBE: Final = KeySpec("personalization:health_probe", "string", 60)


def health_probe() -> str:
    """``personalization:health_probe``: written (and expiring) by health probes; never read."""
    return HEALTH_PROBE.pattern


def user_preferences_gen(user_id: UUID | str) -> str:
    """``user:{user_id}:preferences_gen``: generation token of the preferences snapshot."""
    return USER_PREFERENCES_GEN.pattern.format(user_id=user_id)


def feature_flag_version(flag: str) -> str:
    """``feature_flag_version:{flag}``: the flag's current rules version."""
    return FEATURE_FLAG_VERSION.pattern.format(flag=flag)


def content_embeddings_version() -> str:
    """``content_embeddings:version``: bumped after every content embedding import."""
    return CONTENT_EMBEDDINGS_VERSION.pattern


def user_tag_pattern(user_id: UUID | str) -> str:
    """SCAN pattern of every key carrying the user's hash tag ``{user_id}`` (erase, export).

    Every user key family above puts the user id in braces, so this one pattern matches
    them all, including each ``feature_flag:{flag}:{user_id}`` and families added later
    that follow the same convention.  ``{`` and ``}`` are literal in Redis glob patterns.
    """
    return f"*{{{UUID(str(user_id))}}}*"
