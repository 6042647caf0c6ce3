"""librdkafka log lines go through Python logging, one line per kind and interval."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from confluent_kafka import Producer

from personalization.kafka.kafkalog import KafkaLogThrottle, client_logging


def _record(facility: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("personalization.kafka.t", level, __file__, 1, "%s [%s] %s",
                             (facility, "client#producer-1", message), None)


def test_throttle_lets_one_line_per_kind_through_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = KafkaLogThrottle(interval_s=30, clock=lambda: now[0])
    fail = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after {}ms in state CONNECT)"
    assert throttle.filter(_record("FAIL", fail.format(0)))
    assert not any(throttle.filter(_record("FAIL", fail.format(i))) for i in range(1, 50))
    # Another broker, another facility or another level is another kind.
    assert throttle.filter(_record("FAIL", "10.0.0.2:9092/2: Connect to ipv4#10.0.0.2:9092 failed: timed out"))
    assert throttle.filter(_record("ERROR", fail.format(0)))
    assert throttle.filter(_record("FAIL", fail.format(0), logging.WARNING))
    now[0] = 31.0
    again = _record("FAIL", fail.format(7))
    assert throttle.filter(again)
    assert again.getMessage().endswith("(and 49 more like it in the last 30 s)")
    assert not throttle.filter(_record("FAIL", fail.format(8)))


def test_unreachable_broker_logs_through_python_logging_not_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    client = f"test-{uuid.uuid4().hex[:6]}"
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "reconnect.backoff.ms": 10,
                         "reconnect.backoff.max.ms": 50, **client_logging(client)})
    with caplog.at_level(logging.DEBUG, logger=f"personalization.kafka.{client}"):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            producer.poll(0.1)
    lines = [r for r in caplog.records if r.name == f"personalization.kafka.{client}"]
    assert lines, "librdkafka's connect failures should be logged"
    kinds = {(r.levelno, KafkaLogThrottle.kind(r)) for r in lines}
    assert len(lines) == len(kinds)  # one line per kind within the interval, not several a second
    assert "%3|" not in capfd.readouterr().err  # nothing in librdkafka's own stderr format
