"""Profile and trait use cases; every write notifies the registered listeners after commit.

The read path registers its cache invalidation as a listener, so the preferences
snapshot never outlives a committed profile or trait change made through the API.  Each
write records its invalidation in the outbox in its own transaction; when every listener
says the change reached its cache, the row is cleared, otherwise (Redis down, or this
process killed first) the invalidation replay applies it (``serving/outbox.py``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from personalization.core.models import Profile, ProfileIn, ProfilePatch, Trait, TraitIn
from personalization.store.invalidations import InvalidationOutbox
from personalization.store.profiles import Change, ProfileStore

log = logging.getLogger(__name__)

# Called after each committed change; True when the change reached the listener's cache.
ChangeListener = Callable[[uuid.UUID], Awaitable[bool]]


class ProfileService:
    """Create, read, change and delete profiles and traits."""

    def __init__(self, store: ProfileStore) -> None:
        self.store = store
        self.outbox = InvalidationOutbox(store.db)
        self._listeners: list[ChangeListener] = []

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener(user_id)`` after every committed profile or trait write."""
        self._listeners.append(listener)

    async def _changed(self, user_id: uuid.UUID, change: Change | None) -> None:
        applied = bool(self._listeners)
        for listener in self._listeners:
            try:
                applied = await listener(user_id) and applied
            except Exception:  # a cache problem must not fail a committed write
                applied = False
                log.exception("profile change listener failed for %s", user_id)
        if change is None or not applied:
            return  # the outbox row stays: the replay applies it
        try:
            await self.outbox.clear(change.invalidation_id)
        except Exception:  # the write is committed; the replay applies the row again (harmless)
            log.exception("could not clear the invalidation of %s", user_id)

    async def upsert(self, user_id: uuid.UUID, body: ProfileIn) -> tuple[Profile, bool]:
        """Create or replace the profile; returns it and whether it was created."""
        change = await self.store.upsert(user_id, body.model_dump())
        await self._changed(user_id, change)
        return Profile.model_validate(change.row), change.created

    async def get(self, user_id: uuid.UUID) -> Profile:
        """The profile, or NotFound."""
        return Profile.model_validate(await self.store.get(user_id))

    async def patch(self, user_id: uuid.UUID, body: ProfilePatch) -> Profile:
        """Change only the fields present in ``body``."""
        fields = body.model_dump(include=body.model_fields_set)
        if "privacy_level" in fields and fields["privacy_level"] is None:
            fields["privacy_level"] = "standard"
        result = await self.store.patch(user_id, fields)
        if not isinstance(result, Change):
            return Profile.model_validate(result)  # nothing to change
        await self._changed(user_id, result)
        return Profile.model_validate(result.row)

    async def delete(self, user_id: uuid.UUID) -> None:
        """Delete the profile; traits cascade, events are kept anonymised (user_id NULL)."""
        await self._changed(user_id, await self.store.delete(user_id))

    async def list_traits(self, user_id: uuid.UUID) -> list[Trait]:
        return [Trait.model_validate(r) for r in await self.store.list_traits(user_id)]

    async def add_trait(self, user_id: uuid.UUID, body: TraitIn) -> Trait:
        change = await self.store.add_trait(user_id, body.model_dump())
        await self._changed(user_id, change)
        return Trait.model_validate(change.row)

    async def replace_trait(self, user_id: uuid.UUID, trait_id: uuid.UUID, body: TraitIn) -> tuple[Trait, bool]:
        change = await self.store.replace_trait(user_id, trait_id, body.model_dump())
        await self._changed(user_id, change)
        return Trait.model_validate(change.row), change.created

    async def delete_trait(self, user_id: uuid.UUID, trait_id: uuid.UUID) -> None:
        await self._changed(user_id, await self.store.delete_trait(user_id, trait_id))
