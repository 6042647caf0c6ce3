"""The local Tansu broker starts, carries messages, and dies with its owner."""

from __future__ import annotations

import os
import subprocess
import sys

from confluent_kafka import Producer

from personalization_dev.broker import LocalBroker
from personalization_dev.testing.kafka import consume, new_consumer
from personalization_dev.testing.waiting import wait_until


def test_round_trip(kafka_bootstrap: str) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce("broker-test", key=b"k", value=b"v")
    assert producer.flush(10) == 0
    consumer = new_consumer(kafka_bootstrap, "broker-test")
    try:
        messages = consume(consumer, 1, timeout_s=20)
    finally:
        consumer.close()
    assert [(m.key(), m.value()) for m in messages] == [(b"k", b"v")]


def test_stop_terminates_process() -> None:
    broker = LocalBroker()
    bootstrap = broker.start()
    assert broker.running and bootstrap.startswith("127.0.0.1:")
    broker.stop()
    assert not broker.running
    broker.stop()  # idempotent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_broker_dies_with_parent_killed() -> None:
    script = (
        "import os, sys, time\n"
        "from personalization_dev.broker import LocalBroker\n"
        "b = LocalBroker(); b.start()\n"
        "print(b._proc.pid, flush=True)\n"
        "time.sleep(60)\n"  # the parent stays until the test kills it
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=dict(os.environ))
    assert child.stdout is not None
    broker_pid = int(child.stdout.readline())
    assert _alive(broker_pid)
    child.kill()
    child.wait()
    wait_until(lambda: not _alive(broker_pid), 5, f"the broker (pid {broker_pid}) to die with its parent")
