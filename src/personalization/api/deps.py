"""What route handlers take from the application: the platform and the settings."""

from __future__ import annotations

from fastapi import Request

from personalization.composition import Platform
from personalization.config import Settings


def platform(request: Request) -> Platform:
    """The application's open Platform (database, Redis, use cases)."""
    p: Platform = request.app.state.platform
    return p


def settings(request: Request) -> Settings:
    """The settings the application was built with."""
    s: Settings = request.app.state.auth_settings
    return s
