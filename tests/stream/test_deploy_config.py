"""The Kafka Connect configuration in deploy/ describes the same stream as the relay."""

from __future__ import annotations

import json
from pathlib import Path

from personalization.changestream.relay import debezium_properties
from personalization.config import Settings
from personalization.kafka import names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kafka-connect"

# Properties that decide topic names, keys, envelope and what is captured: these must be
# the same in both deployments (connection details and offset storage legitimately differ).
SEMANTIC = (
    "connector.class",
    "plugin.name",
    "topic.prefix",
    "table.include.list",
    "publication.name",
    "publication.autocreate.mode",
    "slot.name",
    "snapshot.mode",
    "message.key.columns",
    "decimal.handling.mode",
    "tombstones.on.delete",
    "heartbeat.interval.ms",
    "key.converter.schemas.enable",
    "value.converter.schemas.enable",
)


def test_connector_config_matches_relay_properties() -> None:
    connector = json.loads((DEPLOY / "personalization-events-connector.json").read_text())
    config = connector["config"]
    relay = debezium_properties(Settings())
    for name in SEMANTIC:
        assert config[name] == relay[name], name
    assert config["key.converter"] == config["value.converter"] == ("org.apache.kafka.connect.json.JsonConverter")


def test_documented_topics_follow_the_connector_config() -> None:
    connector = json.loads((DEPLOY / "personalization-events-connector.json").read_text())["config"]
    documented = json.loads((DEPLOY / "envelope-fields.json").read_text())
    tables = connector["table.include.list"].split(",")
    assert sorted(documented["topics"]) == sorted(f"{connector['topic.prefix']}.{t}" for t in tables)
    assert names.events_topic(Settings().kafka.topic_prefix) in documented["topics"]
    assert documented["decimal_encoding"] == connector["decimal.handling.mode"]


def test_connector_captures_what_the_consumers_read() -> None:
    """The learner's topics and the cache-invalidation consumer's (profile, traits) are all produced."""
    connector = json.loads((DEPLOY / "personalization-events-connector.json").read_text())["config"]
    prefix = connector["topic.prefix"]
    tables = [t.removeprefix(f"{names.SCHEMA}.") for t in connector["table.include.list"].split(",")]
    captured = set(names.cdc_topics(prefix, tables))
    assert set(names.invalidation_topics(prefix)) <= captured
    assert names.events_topic(prefix) in captured and names.profile_topic(prefix) in captured
    # Trait rows are keyed by their user, like events, so one user's changes share a partition.
    assert "public.user_traits:user_id" in connector["message.key.columns"].split(";")
