"""Topic names (kafka.names): Debezium's ``<prefix>.<schema>.<table>`` rule, spelled once."""

from __future__ import annotations

from personalization.changestream.capture import captured_tables, captured_topics
from personalization.config import Settings
from personalization.kafka import names


def test_debezium_topic_names() -> None:
    assert names.cdc_topic("pz", "user_traits") == "pz.public.user_traits"
    assert names.events_topic("pz") == "pz.public.personalization_events"
    assert names.cdc_topics("pz") == ["pz.public.personalization_events", "pz.public.user_profile",
                                      "pz.public.user_traits"]
    assert names.invalidation_topics("pz") == ["pz.public.user_profile", "pz.public.user_traits"]
    assert names.learner_dlq_topic("pz") == "pz.learner.dlq"


def test_relay_settings_name_the_same_topics() -> None:
    settings = Settings(kafka={"topic_prefix": "pz"}, cdc={"capture_profile": True})
    assert captured_topics(settings) == names.cdc_topics("pz")
    assert captured_tables(settings) == ["public.personalization_events", "public.user_profile", "public.user_traits"]
    events_only = settings.replace(cdc={"capture_profile": False})
    assert captured_topics(events_only) == [names.events_topic("pz")]
