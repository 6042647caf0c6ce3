"""Run ``personalization cdc run`` as a child process (tests, benchmark, local stack).

The relay hosts a JVM, which cannot be restarted inside one Python process, and crash
tests need to SIGKILL it, so callers that are not the relay itself run it as a child.
"""

from __future__ import annotations

from collections.abc import Mapping

from personalization_dev.childproc import CliChild

__all__ = ["RelayProcess", "RelayStartError", "relay_env"]

_STARTED_MARK = "relay started in"


class RelayStartError(RuntimeError):
    """The relay exited or did not start its connector task in time."""


class RelayProcess(CliChild):
    """A relay child process configured through ``PERSONALIZATION_*`` variables."""

    def __init__(self, env: Mapping[str, str], *, args: tuple[str, ...] = (), cwd: str | None = None) -> None:
        """``env`` overrides the inherited environment; ``args`` go after ``cdc run``."""
        super().__init__("personalization.cli.cdc", ("run", *args), env, cwd=cwd, name="cdc-relay")
        self.started_after_s: float | None = None

    def start(self, timeout_s: float = 240.0) -> float:
        """Spawn and wait for the connector task to start; returns the seconds it took."""
        self.spawn()
        self.started_after_s = self.wait_for_output(_STARTED_MARK, timeout_s, error=RelayStartError)
        return self.started_after_s


def relay_env(db_url: str, bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of a relay child of its own: ``db_url``, ``bootstrap``, topic ``prefix`` and a slot of its own."""
    env = {
        "PERSONALIZATION_DATABASE_URL": db_url,
        "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PERSONALIZATION_KAFKA_TOPIC_PREFIX": prefix,
        # Slot names are cluster-wide; one per relay keeps parallel runs apart.
        "PERSONALIZATION_CDC_SLOT_NAME": f"cdc_{prefix}".lower(),
        "PERSONALIZATION_CDC_METRICS_PORT": "0",
        "PERSONALIZATION_CDC_HEARTBEAT_INTERVAL_MS": "1000",
    }
    env.update(extra)
    return env
