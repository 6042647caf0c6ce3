"""The API server freezes its start-up objects out of the cyclic GC (http_gc_tuning)."""

from __future__ import annotations

import gc

from personalization.api.app import create_app
from personalization.config import Settings


async def test_server_start_freezes_startup_objects(settings: Settings) -> None:
    gc.unfreeze()
    threshold = gc.get_threshold()
    try:
        app = create_app(settings.replace(http={"gc_tuning": True}))
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_freeze_can_be_turned_off(settings: Settings) -> None:
    gc.unfreeze()
    threshold = gc.get_threshold()
    app = create_app(settings.replace(http={"gc_tuning": False}))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == threshold
