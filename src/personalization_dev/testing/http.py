"""HTTP clients on the real app, in process (ASGI), for tests.

``tests/conftest.py`` exposes :class:`AppClients` as the ``make_client`` fixture: the one
place a test builds a client, whatever settings (API keys checked or not, limits) or
platform it needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import httpx

from personalization.api.app import create_app
from personalization.composition import Platform
from personalization.config import Settings

__all__ = ["AppClients"]


class AppClients:
    """Makes clients on ``create_app(settings, platform)`` and closes them all at the end."""

    def __init__(self) -> None:
        """No client yet; :meth:`aclose` closes those made since."""
        self._clients = contextlib.AsyncExitStack()

    async def __call__(self, settings: Settings, platform: Platform, *,
                       app_state: Mapping[str, object] | None = None) -> httpx.AsyncClient:
        """A client on the app built from ``settings`` over ``platform`` (open until :meth:`aclose`).

        ``app_state`` is set on ``app.state`` as a served process's lifespan would set it
        (``{"workers": ...}``: the outbox workers the test runs itself).
        """
        app = create_app(settings, platform=platform)
        for name, value in (app_state or {}).items():
            setattr(app.state, name, value)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        return await self._clients.enter_async_context(client)

    async def aclose(self) -> None:
        """Close every client made."""
        await self._clients.aclose()
