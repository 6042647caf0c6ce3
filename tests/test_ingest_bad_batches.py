"""Bad batches get a clear answer (issue 17, failure 6).

* A batch in which no event is accepted answers 422 with every event's errors (a partial
  batch keeps 200 and its ``rejected`` list); nothing is written.
* Signal types are a registry: the built-in ones, the decay's configured ones
  (``PERSONALIZATION_LEARNER_SIGNALS``) and the operator's
  (``PERSONALIZATION_SIGNAL_TYPES_EXTRA``); an unknown type is 422 naming the known ones,
  unless ``PERSONALIZATION_SIGNAL_TYPES_OPEN`` allows any.  A malformed extra type stops a
  CLI command with exit 2 and one line naming the variable.
* A weight outside NUMERIC(4,3) names the range; the fast path and the full model agree.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from personalization.cli.main import app as cli_app
from personalization.composition import open_platform
from personalization.config import Settings, describe_error
from personalization.core.fast_events import fast_events
from personalization.core.models import DEFAULT_LIMITS
from personalization.core.signals import BUILTIN_SIGNAL_TYPES
from personalization.ingest.validation import _parse_events_full
from personalization_dev.testing.http import AppClients

NOW = datetime.now(UTC)
# A client on its own platform built from the test's settings with some sections replaced.
ClientWith = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def _event(**kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"user_id": None, "session_id": str(uuid.uuid4()), "content_id": "JHN.3.16",
                          "content_type": "passage", "signal_type": "read", "signal_weight": 0.5,
                          "occurred_at": (NOW - timedelta(minutes=5)).isoformat()}
    ev.update(kw)
    return ev


@pytest.fixture
def client_with(settings: Settings, make_client: AppClients) -> ClientWith:
    """``async with client_with(ingest={...}) as c``: the signal-type registry is wired at platform start."""

    @asynccontextmanager
    async def make(**sections: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
        cfg = settings.replace(auth={"dev_mode": True}, **sections)
        async with open_platform(cfg) as platform:
            yield await make_client(cfg, platform)

    return make


def _stored(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM personalization_events").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_batch_with_no_accepted_event_is_422_with_every_error(client: httpx.AsyncClient, db_url: str) -> None:
    batch = [_event(signal_weight=99), _event(content_id=""), _event(signal_type="lik")]
    r = await client.post("/v1/events", json={"events": batch})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert {(d["loc"][2], d["field"]) for d in detail} == {
        (0, "events.0.signal_weight"), (1, "events.1.content_id"), (2, "events.2.signal_type")}
    assert all(set(d) >= {"loc", "field", "msg", "type"} for d in detail)
    assert _stored(db_url) == 0

    # One good event among them: 200, the others listed.
    r = await client.post("/v1/events", json={"events": [*batch, _event()]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1 and [x["index"] for x in body["rejected"]] == [0, 1, 2]
    assert _stored(db_url) == 1


async def test_unknown_signal_type_names_the_known_ones(client: httpx.AsyncClient, db_url: str) -> None:
    r = await client.post("/v1/events", json={"events": [_event(signal_type="lik")]})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["field"] == "events.0.signal_type" and err["type"] == "unknown_signal_type"
    assert "'lik'" in err["msg"] and all(t in err["msg"] for t in BUILTIN_SIGNAL_TYPES), err
    r = await client.post("/v1/events", json={"events": [_event(signal_type=t) for t in BUILTIN_SIGNAL_TYPES]})
    assert r.status_code == 200 and r.json()["accepted"] == len(BUILTIN_SIGNAL_TYPES), r.text
    # atomic: the unknown type rejects the batch, nothing written.
    before = _stored(db_url)
    r = await client.post("/v1/events", params={"atomic": "true"},
                          json={"events": [_event(), _event(signal_type="lik")]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "events.1.signal_type", r.text
    assert _stored(db_url) == before


async def test_operator_and_learner_types_and_open_types(client_with: ClientWith, db_url: str) -> None:
    async with client_with(ingest={"signal_types_extra": ("prayed", "note_added")},
                           decay={"signals": {"memorized": {"scale": 2, "half_life_s": 86400}}}) as c:
        r = await c.post("/v1/events", json={"events": [_event(signal_type=t)
                                                         for t in ("prayed", "note_added", "memorized")]})
        assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
        r = await c.post("/v1/events", json={"events": [_event(signal_type="lik")]})
        assert r.status_code == 422
        msg = r.json()["detail"][0]["msg"]
        assert "prayed" in msg and "memorized" in msg
    async with client_with(ingest={"signal_types_open": True}) as c:
        r = await c.post("/v1/events", json={"events": [_event(signal_type="lik")]})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert _stored(db_url) == 4


def test_a_bad_extra_signal_type_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="signal_types_extra"):
        Settings(ingest={"signal_types_extra": ("",)})
    monkeypatch.setenv("PERSONALIZATION_SIGNAL_TYPES_EXTRA", '["prayed", "Bad Type"]')
    with pytest.raises(ValidationError) as exc:
        Settings()
    assert describe_error(exc.value).startswith("PERSONALIZATION_SIGNAL_TYPES_EXTRA: Value error, 'Bad Type' is not")
    # A CLI command stops before connecting anywhere: exit 2, one line, no traceback.
    res = CliRunner().invoke(cli_app, ["db", "upgrade"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith("error: invalid settings: PERSONALIZATION_SIGNAL_TYPES_EXTRA:"), res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("weight", [99, 10, -10, "10.0", 9.9995, 0.1234, -0.0001, "1E+1"])
async def test_weight_out_of_range_names_the_range(weight: Any, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", json={"events": [_event(signal_weight=weight)]})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["field"] == "events.0.signal_weight"
    assert "between -9.999 and 9.999" in err["msg"] and "3 decimal places" in err["msg"], err


@pytest.mark.parametrize("weight", [9.999, -9.999, 0, "-0", "0.5000", 1e-3, "1E+0", 5])
def test_fast_path_and_full_model_accept_the_same_weights(weight: Any) -> None:
    ev = _event(signal_weight=weight)
    full_valid, full_rejected = _parse_events_full([ev], limits=DEFAULT_LIMITS, atomic=False)
    assert full_rejected == [] and len(full_valid) == 1
    fast = fast_events([ev], DEFAULT_LIMITS)
    if fast is not None:
        assert fast[0][7] == full_valid[0][7] or float(fast[0][7]) == float(full_valid[0][7])


@pytest.mark.parametrize("signal", ["lik", "highlight", "VIEW"])
def test_fast_path_and_full_model_agree_on_signal_types(signal: str) -> None:
    ev = _event(signal_type=signal)
    full_valid, full_rejected = _parse_events_full([ev], limits=DEFAULT_LIMITS, atomic=False)
    fast = fast_events([ev], DEFAULT_LIMITS)
    known = signal in BUILTIN_SIGNAL_TYPES
    assert (len(full_valid) == 1) is known and (len(full_rejected) == 1) is not known
    assert (fast is not None) is known
