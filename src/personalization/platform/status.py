"""``personalization status`` and ``GET /healthz/platform``: the supervisor's view plus live lag.

The supervisor's state file says which children run, with which pid and how many
restarts; whether the supervisor itself still runs comes from its lock (a state file
left by a killed supervisor names processes that no longer exist).  The lags are read
live at every call (:mod:`personalization.platform.lag`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from personalization.config import Settings
from personalization.platform.lag import LagReader
from personalization.platform.state import PlatformState, read_state, supervisor_running


class NoPlatform(LookupError):
    """No supervisor ever ran from this directory (no state file)."""


def platform_status(directory: Path, settings: Settings | None = None, *, live: bool = True) -> dict[str, Any]:
    """The status document: ``{"supervisor": {...}, "components": [{name, state, pid, restarts, lag, ...}]}``.

    ``live=False`` skips the lag probes (no connection to any service).  The probes use
    the supervisor's services with the rest of ``settings`` (the slot name, ...; default:
    the tree read from the environment now).  Raises NoPlatform when no supervisor ever
    wrote its state in ``directory``.
    """
    state = read_state(directory)
    running = supervisor_running(directory)
    if state is None and running:
        # `up` holds the lock while it starts the embedded stack, before its first state write.
        return {"supervisor": {"pid": None, "state": "starting"}, "components": []}
    if state is None:
        raise NoPlatform(f"no platform state in {directory}: start it with `personalization up`")
    now = time.time()
    components: list[dict[str, Any]] = []
    with LagReader(dict(state.services), settings or Settings()) as lag:
        for rec in state.children:
            alive = running and rec.pid is not None
            item: dict[str, Any] = {
                "name": rec.name,
                "role": rec.role,
                "state": rec.state if running or rec.state in ("stopped", "failed") else "down",
                "pid": rec.pid if alive else None,
                "restarts": rec.restarts,
            }
            if rec.url is not None:
                item["url"] = rec.url
            if alive and rec.started_at is not None:
                item["uptime_s"] = round(now - rec.started_at, 1)
            if rec.last_exit_code is not None:
                item["last_exit_code"] = rec.last_exit_code
            if running and rec.next_start_at is not None and rec.state in ("backoff", "failing"):
                item["restart_in_s"] = round(max(0.0, rec.next_start_at - now), 1)
            if rec.state in ("backoff", "failing", "failed") and rec.last_output:
                item["last_output"] = rec.last_output
            item["lag"] = lag.read(rec) if live and running else {}
            components.append(item)
    return {"supervisor": _supervisor(state, running), "components": components}


def _supervisor(state: PlatformState, running: bool) -> dict[str, Any]:
    return {
        "pid": state.pid if running else None,
        "state": state.state if running or state.state == "stopped" else "down",
        "started_at": state.started_at,
        "roles": state.roles,
        "embedded_stack": state.embedded_stack,
        "api_url": state.api_url,
    }


def healthy(status: dict[str, Any]) -> bool:
    """Every component up under a running supervisor."""
    return status["supervisor"]["state"] == "running" and all(c["state"] == "up" for c in status["components"])
