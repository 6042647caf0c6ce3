"""One structured log stream for every child: a JSON object per line, named by component.

The children log in their own formats (the API and the jobs as JSON lines, the relay and
the learner as text, the JVM as it likes).  Each child's output is a pipe that a thread
reads line by line: a line that is a JSON object gets a ``component`` key, any other line
becomes ``{"ts", "component", "msg"}``.  The supervisor's own events use the component
name ``supervisor``.  With a log directory, every child writes to its own file instead
(``<name>.log``, appended across restarts) and only the supervisor's events go to stderr.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import IO, Any

import orjson

SUPERVISOR = "supervisor"


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def structure(component: str, line: str) -> bytes:
    """One line of a child's output as one JSON line naming the component."""
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return orjson.dumps({"component": component, **parsed}) + b"\n"
    return orjson.dumps({"ts": _now(), "component": component, "msg": text}) + b"\n"


class LogSink:
    """Where structured lines go (stderr by default); safe to use from several threads."""

    def __init__(self, out: IO[bytes]) -> None:
        """Write to ``out`` (a binary stream)."""
        self._out = out
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """Write whole lines at once so lines of two children never interleave."""
        with self._lock:
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                # stderr closed (the terminal went away): the children keep running.
                pass

    def event(self, message: str, component: str = SUPERVISOR, level: str = "info", **fields: Any) -> None:
        """One event of the supervisor itself."""
        record = {"ts": _now(), "component": component, "level": level, "msg": message, **fields}
        self.write(orjson.dumps(record, default=str) + b"\n")


class OutputPump:
    """Copies one child's output pipe into the sink; keeps the last lines for reports."""

    def __init__(self, component: str, pipe: IO[bytes], sink: LogSink, keep: int = 20) -> None:
        """Start reading ``pipe`` in a daemon thread."""
        self.component = component
        self._pipe = pipe
        self._sink = sink
        self._tail: collections.deque[str] = collections.deque(maxlen=keep)
        self._thread = threading.Thread(target=self._run, name=f"log-{component}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._pipe:
            for raw in iter(self._pipe.readline, b""):
                line = raw.decode("utf-8", "replace")
                self._tail.append(line.rstrip("\r\n")[:500])
                self._sink.write(structure(self.component, line))

    def tail(self) -> list[str]:
        """The last lines the child wrote."""
        return list(self._tail)

    def join(self, timeout_s: float) -> None:
        """Wait until the child's end of the pipe is closed and everything is copied."""
        self._thread.join(timeout_s)
