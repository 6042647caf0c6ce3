"""Authentication and authorisation failures (mapped to 401, 403 and 429 by the API)."""

from __future__ import annotations

from personalization.errors import PersonalizationError


class AuthError(PersonalizationError):
    """Base of the request-level security refusals; ``status`` is the HTTP status."""

    status = 401
    type = "unauthorized"

    def __init__(self, msg: str, headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}
        super().__init__(msg)


class Unauthorized(AuthError):
    """No key, or a key that is malformed, unknown or revoked (one message for all: no oracle)."""

    status = 401
    type = "unauthorized"

    def __init__(self, msg: str) -> None:
        super().__init__(msg, {"WWW-Authenticate": 'Bearer realm="personalization"'})


class Forbidden(AuthError):
    """A valid key without the scope the route needs."""

    status = 403
    type = "forbidden"


class RateLimited(AuthError):
    """The key's token bucket is empty."""

    status = 429
    type = "rate_limited"
