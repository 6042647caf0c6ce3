"""Profile and trait use cases; every write notifies the registered listeners after commit.

The read path registers its cache invalidation as a listener, so the preferences
snapshot never outlives a committed profile or trait change made through the API.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from personalization.core.models import Profile, ProfileIn, ProfilePatch, Trait, TraitIn
from personalization.store.profiles import ProfileStore

log = logging.getLogger(__name__)

ChangeListener = Callable[[uuid.UUID], Awaitable[None]]


class ProfileService:
    """Create, read, change and delete profiles and traits."""

    def __init__(self, store: ProfileStore) -> None:
        self.store = store
        self._listeners: list[ChangeListener] = []

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener(user_id)`` after every committed profile or trait write."""
        self._listeners.append(listener)

    async def _changed(self, user_id: uuid.UUID) -> None:
        for listener in self._listeners:
            try:
                await listener(user_id)
            except Exception:  # a cache problem must not fail a committed write
                log.exception("profile change listener failed for %s", user_id)

    async def upsert(self, user_id: uuid.UUID, body: ProfileIn) -> tuple[Profile, bool]:
        """Create or replace the profile; returns it and whether it was created."""
        row, created = await self.store.upsert(user_id, body.model_dump())
        await self._changed(user_id)
        return Profile.model_validate(row), created

    async def get(self, user_id: uuid.UUID) -> Profile:
        """The profile, or NotFound."""
        return Profile.model_validate(await self.store.get(user_id))

    async def patch(self, user_id: uuid.UUID, body: ProfilePatch) -> Profile:
        """Change only the fields present in ``body``."""
        fields = body.model_dump(include=body.model_fields_set)
        if "privacy_level" in fields and fields["privacy_level"] is None:
            fields["privacy_level"] = "standard"
        row = await self.store.patch(user_id, fields)
        await self._changed(user_id)
        return Profile.model_validate(row)

    async def delete(self, user_id: uuid.UUID) -> None:
        """Delete the profile; traits cascade, events are kept anonymised (user_id NULL)."""
        await self.store.delete(user_id)
        await self._changed(user_id)

    async def list_traits(self, user_id: uuid.UUID) -> list[Trait]:
        return [Trait.model_validate(r) for r in await self.store.list_traits(user_id)]

    async def add_trait(self, user_id: uuid.UUID, body: TraitIn) -> Trait:
        row = await self.store.add_trait(user_id, body.model_dump())
        await self._changed(user_id)
        return Trait.model_validate(row)

    async def replace_trait(self, user_id: uuid.UUID, trait_id: uuid.UUID, body: TraitIn) -> tuple[Trait, bool]:
        row, created = await self.store.replace_trait(user_id, trait_id, body.model_dump())
        await self._changed(user_id)
        return Trait.model_validate(row), created

    async def delete_trait(self, user_id: uuid.UUID, trait_id: uuid.UUID) -> None:
        await self.store.delete_trait(user_id, trait_id)
        await self._changed(user_id)
