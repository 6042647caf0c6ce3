"""The demo's freshness probe: an independent consumer of the CDC topic."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import numpy as np

from personalization_dev.demo.errors import DemoError


class FreshnessProbe:
    """An independent consumer of the CDC topic: commit-to-consume latency of every insert."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.latencies_ms: list[tuple[float, float]] = []  # (commit ts, latency)
        self.inserts = 0
        self._stop = threading.Event()
        self.assigned = threading.Event()
        # The consumer is not thread-safe: it is created here and then used only by
        # the probe's own thread (and closed there).
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-probe-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        })
        self._thread = threading.Thread(target=self._loop, name="freshness-probe", daemon=True)

    def start(self, timeout: float = 60) -> None:
        """Subscribe and wait until the group has assigned partitions, so no latency is a join delay."""

        def on_assign(consumer: Any, partitions: Any) -> None:
            self.assigned.set()

        self._consumer.subscribe([self.topic], on_assign=on_assign)
        self._thread.start()
        if not self.assigned.wait(timeout):
            raise DemoError(f"the freshness probe got no partitions of {self.topic} within {timeout:.0f} s")

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(500, 0.2):
                    value = msg.value()
                    if msg.error() or value is None:
                        continue
                    now_ms = time.time() * 1000
                    try:
                        env = json.loads(value)
                    except ValueError:
                        continue
                    if env.get("op") != "c":
                        continue
                    self.inserts += 1
                    ts = (env.get("source") or {}).get("ts_ms")
                    if isinstance(ts, int | float):
                        self.latencies_ms.append((ts, now_ms - ts))
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def percentile(self, p: float, since_ms: float = 0.0) -> float:
        """Latency percentile of the inserts committed at or after ``since_ms`` (epoch ms)."""
        xs = [lat for ts, lat in self.latencies_ms if ts >= since_ms]
        if not xs:
            return float("nan")
        return float(np.percentile(xs, p))
