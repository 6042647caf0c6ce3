"""Pytest fixtures and helpers for tests that need a Kafka-compatible broker.

Register the fixtures in a ``conftest.py`` with::

    pytest_plugins = ["personalization.stream.testing"]

``kafka_bootstrap`` is session-scoped: one memory-only broker serves the whole run, so
tests isolate themselves with their own topic names and a fresh consumer group id each.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Message

from personalization.stream.broker import LocalBroker

__all__ = ["consume", "kafka_bootstrap", "new_consumer"]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a Tansu broker started for this test session."""
    with LocalBroker() as bootstrap:
        yield bootstrap


def new_consumer(bootstrap: str, *topics: str) -> Consumer:
    """A consumer reading ``topics`` from the beginning in a group of its own.

    A fresh group id and a short session timeout avoid Tansu's consumer-group lock-up
    when every member of a group leaves during a rebalance.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    if topics:
        consumer.subscribe(list(topics))
    return consumer


def consume(
    consumer: Consumer,
    count: int,
    timeout_s: float = 30.0,
    *,
    idle_s: float | None = None,
) -> list[Message]:
    """Poll until ``count`` messages arrived or ``timeout_s`` passed.

    With ``idle_s`` it keeps reading after ``count`` until nothing arrived for that long,
    which lets a test see duplicates delivered after the expected messages.
    """
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline:
        if len(messages) >= count and (idle_s is None or time.monotonic() - last > idle_s):
            break
        batch = consumer.consume(num_messages=1000, timeout=0.2)
        for message in batch:
            if message.error() is None:
                messages.append(message)
                last = time.monotonic()
    return messages
