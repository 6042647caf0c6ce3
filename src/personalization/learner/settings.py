"""What the online learner derives from the settings tree (:mod:`personalization.config`).

Its own knobs are ``settings.learner`` (``PERSONALIZATION_LEARNER_*``), its decay is
``settings.decay`` (shared with the nightly job and the exports), the embedding dimension
``settings.embedding.dim``; the topic names come from :mod:`personalization.kafka.names`.
"""

from __future__ import annotations

from personalization.config import Settings
from personalization.kafka import names

__all__ = ["dlq_topic", "subscribed_topics"]


def subscribed_topics(settings: Settings) -> list[str]:
    """The topics the learner subscribes to: events, and user_profile unless turned off."""
    prefix = settings.kafka.topic_prefix
    return [names.events_topic(prefix), *([names.profile_topic(prefix)] if settings.learner.follow_profiles else [])]


def dlq_topic(settings: Settings) -> str:
    """Where unreadable messages are parked."""
    return settings.learner.dlq_topic or names.learner_dlq_topic(settings.kafka.topic_prefix)
