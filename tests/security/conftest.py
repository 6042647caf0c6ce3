"""Fixtures of the security tests: the real app with API keys checked, and key factories.

``open_client`` is the app in development mode (keys not checked), used to set up data
through the public API where a test is not about authentication.
"""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr
from security_helpers import MakeKey

from personalization.composition import Platform
from personalization.config import Settings
from personalization.security.keys import KeyStore
from personalization_dev.testing.http import AppClients

# kafka_bootstrap (one Tansu broker per session, shared with the stream tests).


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    """Keys checked (never dev mode), a server secret, short revalidation, no Kafka unless a test asks."""
    return settings.replace(
        auth={"dev_mode": False, "api_key_secret": SecretStr("test-server-secret"), "revalidate_s": 0.5},
        erase={"kafka_tombstones": False},
    )


@pytest.fixture
async def auth_client(platform: Platform, make_client: AppClients, auth_settings: Settings) -> httpx.AsyncClient:
    """An HTTP client on the real app with API keys enforced."""
    return await make_client(auth_settings, platform)


@pytest.fixture
async def open_client(platform: Platform, make_client: AppClients, auth_settings: Settings) -> httpx.AsyncClient:
    """The same app in development mode (no keys), for setting up data."""
    return await make_client(auth_settings.replace(auth={"dev_mode": True}), platform)


@pytest.fixture
def make_key(platform: Platform, auth_settings: Settings) -> MakeKey:
    """``await make_key("read", "ingest", name=...)`` returns a fresh key with those scopes."""
    counter = iter(range(1_000_000))

    async def make(*scopes: str, name: str | None = None) -> str:
        key, _ = await KeyStore(platform.db, auth_settings).create(name or f"test-{next(counter)}", list(scopes),
                                                                   "test")
        return key

    return make


@pytest.fixture
async def admin_headers(make_key: MakeKey) -> dict[str, str]:
    """Authorization header of a key with every scope."""
    key = await make_key("admin", "read", "ingest", "profile:write", name="test-admin")
    return {"Authorization": f"Bearer {key}"}
