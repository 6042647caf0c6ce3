"""The platform's own recommender in the demo (issue 16), through its HTTP routes and CLI.

A deployment without it answers 404 on the route path itself (an ``http_error`` in the
project's error shape), which is told apart from the route's own 404 for an unknown
reader (``not_found`` naming ``user_id``); the demo then reports "recommender not
installed" and goes on without it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from personalization_dev.demo.errors import DemoError

ROUTE = "/v1/users/{user_id}/recommendations"


def installed(base: str, headers: dict[str, str]) -> bool:
    """Whether the API serves the recommendations route (asked about a reader that does not exist)."""
    r = httpx.get(base + ROUTE.format(user_id="00000000-0000-4000-8000-000000000000"), headers=headers,
                  params={"limit": 1}, timeout=30)
    if r.status_code == 404:
        # The route's own 404 is a ``not_found`` error naming the field; an unknown path is
        # the framework's ``http_error`` (or, without the project's handlers, a plain string).
        detail = r.json().get("detail")
        return isinstance(detail, list) and any(d.get("type") != "http_error" for d in detail)
    return r.status_code < 500


def model_versions(base: str) -> Any:
    """The model versions the API process serves with (``/healthz/recommendations``), or None."""
    r = httpx.get(base + "/healthz/recommendations", timeout=30)
    if r.status_code != 200:
        return None
    body = r.json()
    return body.get("versions") if body.get("loaded") else None


def wait_for_models(base: str, headers: dict[str, str], user_id: str, before: Any, timeout: float = 120) -> None:
    """Wait until the API serves the models the nightly job just trained (it polls for new versions)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A request makes the process check the versions (its loader is lazy).
        httpx.get(base + ROUTE.format(user_id=user_id), headers=headers, params={"limit": 1}, timeout=60)
        r = httpx.get(base + "/healthz/recommendations", timeout=30)
        body = r.json() if r.status_code == 200 else {}
        # Loaded after the nightly job finished, or reloaded since: the job's versions.
        if body.get("loaded") and body.get("versions") != before:
            return
        time.sleep(0.5)
    raise DemoError(f"the API did not load the nightly job's recommendation models within {timeout:.0f} s")


async def recommendations(client: httpx.AsyncClient, user_id: str, limit: int) -> dict[str, Any]:
    """``GET /v1/users/{id}/recommendations?limit=``: the reader's list with its variant and reasons."""
    r = await client.get(ROUTE.format(user_id=user_id), params={"limit": limit})
    if r.status_code != 200:
        raise DemoError(f"recommendations for {user_id} -> HTTP {r.status_code}: {r.text[:300]}")
    body: dict[str, Any] = r.json()
    return body


def evaluation(run_cli: Callable[..., str], k: int) -> dict[str, Any]:
    """``personalization eval recommendations --json``: ndcg, recall and coverage per method."""
    out = run_cli("eval", "recommendations", "--k", str(k), "--json")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise DemoError(f"eval recommendations printed no JSON line: {out[-300:]}")
    doc = json.loads(lines[-1])
    methods = doc.get("methods") or {}
    keep = ("recommender", "popularity", "implicit_als")
    return {
        "k": doc.get("k", k),
        "test_readers": doc.get("test_readers"),
        "methods": {m: {x: methods[m].get(x) for x in ("ndcg", "recall", "coverage")} for m in keep if m in methods},
    }
