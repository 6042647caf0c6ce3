"""librdkafka's log lines through Python logging, throttled.

By default librdkafka prints to stderr in its own format (``%3|1795687739.019|FAIL|...``)
and, while a broker is unreachable, repeats the same connect failure several times a
second for as long as the outage lasts.  Every long-running client of the project
(relay producer, learner consumer, cache invalidation consumer, erase producer) passes
:func:`client_logging` into its configuration instead: the lines reach the process's
structured logging under ``personalization.kafka.<client>``, and a repeated line of the
same kind (facility and broker) is let through once per ``interval_s`` with the number
it stood for.

librdkafka queues the lines and confluent-kafka delivers them from ``poll()`` /
``consume()`` / ``flush()`` on the client's own thread, so the filter needs no lock
for one client; it takes one anyway because a logger may be shared by several clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["KafkaLogThrottle", "client_logging"]

DEFAULT_INTERVAL_S = 30.0


class KafkaLogThrottle(logging.Filter):
    """Lets one line of each kind through per interval; the next one says how many were held back."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def kind(record: logging.LogRecord) -> str:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, message); a message
        # starts with the broker it is about ("127.0.0.1:9092/bootstrap: Connect to ...").
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 3:
            facility, _name, message = (str(a) for a in args)
            return f"{facility} {message.split(': ', 1)[0]}"
        return record.getMessage()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, self.kind(record))
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.interval_s:
                self._last[key] = (last[0], last[1] + 1)
                return False
            held = last[1] if last is not None else 0
            self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.interval_s:g} s)"
        return True


_configured: set[str] = set()
_configured_lock = threading.Lock()


def client_logging(client: str, interval_s: float = DEFAULT_INTERVAL_S) -> dict[str, Any]:
    """Configuration entries that route a confluent-kafka client's log lines to ``personalization.kafka.<client>``."""
    logger = logging.getLogger(f"personalization.kafka.{client}")
    with _configured_lock:
        if client not in _configured:
            logger.addFilter(KafkaLogThrottle(interval_s))
            _configured.add(client)
    return {"logger": logger}
