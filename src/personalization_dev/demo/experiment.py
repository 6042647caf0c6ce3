"""The demo's experiment: the ``personalization`` rollout read out as an A/B test.

Through the HTTP API only: the flag's rules (a fresh salt per run, so every run is a
new phase with its own exposures), the metrics, the readers' first evaluations (the
login pre-warm, before their live traffic) and the results document of each metric.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from personalization_dev.demo.errors import DemoError

FLAG = "personalization"
ROLLOUT_PERCENT = 90
# The metrics the readout reports: what a reader does in the week after their first
# evaluation of the flag.
METRICS: dict[str, dict[str, Any]] = {
    "bookmarks": {"signal_types": ["bookmark"], "aggregation": "count", "window_days": 7,
                  "description": "bookmarks in the week after the first evaluation (demo)"},
    "reads": {"signal_types": ["read", "complete"], "aggregation": "count", "window_days": 7,
              "description": "reads and completions in the week after the first evaluation (demo)"},
}


def _ok(r: httpx.Response, what: str) -> dict[str, Any]:
    if r.status_code >= 400:
        raise DemoError(f"{what} -> HTTP {r.status_code}: {r.text[:300]}")
    body: dict[str, Any] = r.json() if r.content else {}
    return body


def set_up(base: str, headers: dict[str, str]) -> None:
    """The rollout (a new phase: its salt is new) and the readout's metrics."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        # The spec's rollout flag of personalization itself: 90 % of readers get the
        # personalized order, the rest the non-personalized one (the rollout is the experiment).
        _ok(client.put(f"/v1/flags/{FLAG}", json={
            "enabled": True, "rollout_percent": ROLLOUT_PERCENT, "salt": f"demo-{uuid.uuid4().hex[:12]}",
            "description": "demo rollout"}), f"PUT /v1/flags/{FLAG}")
        for name, body in METRICS.items():
            _ok(client.put(f"/v1/metrics/{name}", json=body), f"PUT /v1/metrics/{name}")


async def expose(client: httpx.AsyncClient, user_ids: list[str], concurrency: int,
                 advance: Callable[[], None]) -> None:
    """Every reader opens the app (login pre-warm): their first evaluation, i.e. their exposure."""
    import asyncio

    queue: asyncio.Queue[str] = asyncio.Queue()
    for u in user_ids:
        queue.put_nowait(u)

    async def worker() -> None:
        while not queue.empty():
            u = queue.get_nowait()
            _ok(await client.post(f"/v1/users/{u}/login"), f"POST /v1/users/{u}/login")
            advance()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def readout(base: str, headers: dict[str, str]) -> dict[str, Any]:
    """The phase's exposures and, per metric, the arms, the uplift of ``on`` over ``off`` and its tests."""
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        summary = _ok(client.get(f"/v1/experiments/{FLAG}"), f"GET /v1/experiments/{FLAG}")
        metrics = {}
        for name in METRICS:
            doc = _ok(client.get(f"/v1/experiments/{FLAG}/results", params={"metric": name}),
                      f"GET /v1/experiments/{FLAG}/results?metric={name}")
            metrics[name] = _figures(doc)
    current = (summary.get("phases") or [{}])[-1]
    exposures = {f"{e['variant']}/{e['reason']}": e["users"] for e in current.get("exposures") or []}
    return {"flag": FLAG, "phase": current.get("phase"), "exposures": exposures, "metrics": metrics}


def _figures(doc: dict[str, Any]) -> dict[str, Any]:
    uplift = doc.get("relative_uplift") or {}
    return {
        "variants": [{"variant": v["variant"], "users": v["users"], "mean": round(float(v["mean"]), 4)}
                     for v in doc.get("variants") or []],
        "uplift": _round(uplift.get("estimate")),
        "ci95": [_round(x) for x in uplift["ci95"]] if uplift.get("ci95") else None,
        "p_value": _round(uplift.get("p_value")),
        "srm_p_value": _round(doc.get("srm_p_value")),
        "chance_to_win": _round(doc.get("chance_to_win")),
        "warning": doc.get("warning"),
        "verdict": verdict(doc),
    }


def _round(x: Any) -> float | None:
    return None if x is None else round(float(x), 4)


def verdict(doc: dict[str, Any]) -> str:
    """One honest sentence on a results document."""
    if doc.get("warning"):
        return f"no verdict: {doc['warning']}"
    uplift = doc.get("relative_uplift") or {}
    p, ci = uplift.get("p_value"), uplift.get("ci95")
    srm = doc.get("srm_p_value")
    note = "; sample-ratio mismatch (SRM p < 0.001): the split is suspect" if srm is not None and srm < 0.001 else ""
    if p is None or not ci:
        return "no verdict: the route gave no test" + note
    if p < 0.05 and ci[0] > 0:
        return "on beats off (significant at 5 %)" + note
    if p < 0.05 and ci[1] < 0:
        return "on is worse than off (significant at 5 %)" + note
    return "no significant difference between the arms (A/A-like at this size)" + note
