"""Request authentication: ``Authorization: Bearer <key>`` to a :class:`Principal`.

A verified key is cached in the process under the SHA-256 of the presented token, so
the hash of the secret (an HMAC, or tens of milliseconds of scrypt) is computed once per
key and process.  Every ``auth_revalidate_s`` seconds the next request of that key
re-reads its row (one ``UPDATE ... RETURNING`` that also records ``last_used_at``), so a
revocation takes effect within that many seconds in every process.  Concurrent requests
of one key share a single revalidation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from personalization.config import Settings
from personalization.errors import StoreUnavailable
from personalization.security.errors import Forbidden, RateLimited, Unauthorized
from personalization.security.keys import KeyStore, needs_slow_verify, parse_key, server_secret_of, verify_secret
from personalization.security.ratelimit import TokenBuckets, retry_after_header

log = logging.getLogger("personalization.security")

# Longer than any real key header; anything above is refused before parsing.
MAX_AUTHORIZATION_CHARS = 256
# With PostgreSQL unreachable, a key verified before stays usable this many revalidation
# periods (reads served from Redis keep working); an unknown key is refused.
_STALE_GRACE_PERIODS = 15
_MAX_CACHED = 10_000

MISSING = "missing API key: send 'Authorization: Bearer <key>'"
INVALID = "invalid API key"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key id, its name and scopes (``dev`` in development mode)."""

    key_id: str
    name: str
    scopes: frozenset[str]
    dev: bool = False

    @property
    def actor(self) -> str:
        """The audit log's actor string."""
        return "dev-mode" if self.dev else f"key:{self.key_id}:{self.name}"

    def has(self, scope: str) -> bool:
        """True when the key carries ``scope``."""
        return self.dev or scope in self.scopes


DEV_PRINCIPAL = Principal("dev", "development mode", frozenset(), dev=True)


@dataclass
class _Entry:
    principal: Principal
    checked: float
    key_id: str = field(default="")


class Authenticator:
    """Verifies bearer keys against :class:`KeyStore`, with a short-lived in-process cache."""

    def __init__(self, store: KeyStore, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._ttl = settings.auth.revalidate_s
        self._secret = server_secret_of(settings)
        self._cache: dict[bytes, _Entry] = {}
        self._rejected: dict[bytes, float] = {}
        self._inflight: dict[bytes, asyncio.Future[Principal]] = {}
        self.limits = TokenBuckets(settings.auth.rate_limit_per_s, settings.auth.rate_limit_burst, clock)

    async def authenticate(self, authorization: str | None, scope: str | None = None) -> Principal:
        """The principal of a request, checked for ``scope`` and the key's rate limit.

        Raises Unauthorized (401), Forbidden (403) or RateLimited (429).
        """
        principal = await self._principal(authorization)
        if scope is not None and not principal.has(scope):
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        wait = self.limits.acquire(principal.key_id)
        if wait is not None:
            raise RateLimited("rate limit of this API key exceeded, retry later",
                              {"Retry-After": retry_after_header(wait)})
        return principal

    async def _principal(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized(MISSING)
        if len(authorization) > MAX_AUTHORIZATION_CHARS:
            raise Unauthorized(INVALID)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(MISSING)
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        now = self._clock()
        entry = self._cache.get(digest)
        if entry is not None and now - entry.checked < self._ttl:
            return entry.principal
        rejected_at = self._rejected.get(digest)
        if rejected_at is not None and now - rejected_at < self._ttl:
            raise Unauthorized(INVALID)
        fut = self._inflight.get(digest)
        if fut is None:
            fut = asyncio.ensure_future(self._check(token, digest, entry))
            self._inflight[digest] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(digest, None))
        return await asyncio.shield(fut)

    def _reject(self, digest: bytes) -> Unauthorized:
        self._cache.pop(digest, None)
        if len(self._rejected) >= _MAX_CACHED:
            self._rejected.clear()
        self._rejected[digest] = self._clock()
        return Unauthorized(INVALID)

    async def _check(self, token: str, digest: bytes, entry: _Entry | None) -> Principal:
        if entry is not None:
            return await self._revalidate(digest, entry)
        parsed = parse_key(token)
        if parsed is None:
            raise self._reject(digest)
        stored = await self.store.get(parsed.key_id)
        if stored is None or stored.revoked_at is not None:
            raise self._reject(digest)
        if needs_slow_verify(stored):
            ok = await asyncio.to_thread(verify_secret, stored, parsed.secret, self._secret)
        else:
            ok = verify_secret(stored, parsed.secret, self._secret)
        if not ok:
            if stored.hash_scheme == "hmac-sha256" and not self._secret:
                log.error("API key %s was made with a server secret; set PERSONALIZATION_API_KEY_SECRET",
                          stored.key_id)
            raise self._reject(digest)
        touched = await self.store.touch(stored.key_id)
        if touched is None or touched[2] is not None:
            raise self._reject(digest)
        principal = Principal(stored.key_id, touched[0], frozenset(touched[1]))
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = _Entry(principal, self._clock(), stored.key_id)
        return principal

    async def _revalidate(self, digest: bytes, entry: _Entry) -> Principal:
        try:
            touched = await self.store.touch(entry.key_id)
        except StoreUnavailable:
            if self._clock() - entry.checked < self._ttl * _STALE_GRACE_PERIODS:
                log.warning("key store unreachable; using the cached verification of key %s", entry.key_id)
                return entry.principal
            raise
        if touched is None or touched[2] is not None:
            raise self._reject(digest)
        principal = Principal(entry.key_id, touched[0], frozenset(touched[1]))
        self._cache[digest] = _Entry(principal, self._clock(), entry.key_id)
        return principal
