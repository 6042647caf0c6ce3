"""Topic names (kafka.names): Debezium's ``<prefix>.<schema>.<table>`` rule, spelled once."""

from __future__ import annotations

from personalization.changestream.settings import CdcSettings
from personalization.kafka import names


def test_debezium_topic_names() -> None:
    assert names.cdc_topic("pz", "user_traits") == "pz.public.user_traits"
    assert names.events_topic("pz") == "pz.public.personalization_events"
    assert names.cdc_topics("pz") == ["pz.public.personalization_events", "pz.public.user_profile",
                                      "pz.public.user_traits"]
    assert names.invalidation_topics("pz") == ["pz.public.user_profile", "pz.public.user_traits"]
    assert names.learner_dlq_topic("pz") == "pz.learner.dlq"


def test_relay_settings_name_the_same_topics() -> None:
    cdc = CdcSettings(kafka_topic_prefix="pz")
    assert cdc.captured_topics == names.cdc_topics("pz")
    assert cdc.captured_tables == ["public.personalization_events", "public.user_profile", "public.user_traits"]
    assert CdcSettings(kafka_topic_prefix="pz", cdc_capture_profile=False).captured_topics == [names.events_topic("pz")]
