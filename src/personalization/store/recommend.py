"""PostgreSQL side of the recommender: catalogue, reader history, training events, artefacts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q
from personalization.store.serving import catalog_version

_SQL = "recommend.sql"

# (content_id, content_type, title, passage_id, translation, series, position, tags, embedding)
CatalogTuple = tuple[str, str | None, str | None, str | None, str | None, str | None, int | None, list[str],
                     bytes | None]
# (content_id, signal_type, signal_weight, epoch seconds)
HistoryTuple = tuple[str, str, float, float]


def _q(name: str) -> str:
    return q(name, _SQL)


class RecommendStore:
    """Reads and writes of the recommender; rows come as tuples (100k-row loads stay cheap)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.db.connection() as conn, conn.cursor() as cur:
            with wrap_exceptions():
                await cur.execute(_q(name), params)
                return await cur.fetchall()

    async def stream(self, name: str, params: dict[str, Any], chunk: int = 50_000) -> AsyncIterator[
            list[tuple[Any, ...]]]:
        """Rows of a large query in chunks, through a server-side cursor (bounded client memory)."""
        async with self.db.connection() as conn, conn.cursor(name=f"rec_{uuid.uuid4().hex[:8]}") as cur:
            with wrap_exceptions():
                await cur.execute(_q(name), params)
                while True:
                    rows = await cur.fetchmany(chunk)
                    if not rows:
                        break
                    yield rows

    async def catalog_version(self) -> int:
        """The durable catalogue version, owned by content import (:func:`store.serving.catalog_version`)."""
        return await catalog_version(self.db)

    async def model_versions(self) -> dict[str, int]:
        """``{kind: version}`` of the stored artefacts."""
        return {str(k): int(v) for k, v in await self._rows("model_versions", {})}

    async def model(self, kind: str) -> tuple[int, bytes, datetime, dict[str, Any]] | None:
        """(version, artefact, trained_until, params) of one artefact kind."""
        rows = await self._rows("model", {"kind": kind})
        if not rows:
            return None
        _, version, _, until, params, blob = rows[0]
        return int(version), bytes(blob), until, dict(params or {})

    async def put_models(self, models: Sequence[tuple[str, bytes, datetime, dict[str, Any]]]) -> dict[str, int]:
        """Replace artefacts in one transaction: (kind, artefact, trained_until, params); returns versions."""
        out: dict[str, int] = {}
        async with self.db.connection() as conn, conn.cursor() as cur:
            with wrap_exceptions():
                for kind, blob, until, params in models:
                    await cur.execute(_q("put_model"), {"kind": kind, "artefact": blob, "trained_until": until,
                                                        "params": Jsonb(params)})
                    row = await cur.fetchone()
                    assert row is not None
                    out[kind] = int(row[0])
        return out

    async def catalog(self, dim: int) -> list[CatalogTuple]:
        """Every catalogue row with its embedding (of ``dim``) in content id order."""
        return [tuple(r) for r in await self._rows("catalog", {"dim": dim})]

    async def user_history(self, user_id: uuid.UUID, limit: int) -> list[HistoryTuple]:
        """The reader's ``limit`` most recent events, newest first."""
        return [tuple(r) for r in await self._rows("user_history", {"user_id": user_id, "limit": limit})]

    async def window_engagement(self, since: datetime, until: datetime, half_life_s: float) -> list[
            tuple[str, str, float]]:
        """(content_id, signal_type, decayed |weight| sum) of every event in the window."""
        rows = await self._rows("window_engagement", {"since": since, "until": until, "half_life_s": half_life_s})
        return [(str(c), str(t), float(w)) for c, t, w in rows]

    def training_events(self, until: datetime, levels: Sequence[str], null_ok: bool) -> AsyncIterator[
            list[tuple[Any, ...]]]:
        """(user_id, content_id, signal_type, signal_weight, epoch) of readers allowed personalization, in chunks."""
        return self.stream("training_events", {"until": until, "levels": list(levels), "null_ok": null_ok})

    async def event_time_range(self) -> tuple[float | None, float | None, int]:
        """(first, last) epoch seconds and the count of events of known readers."""
        rows = await self._rows("event_time_range", {})
        first, last, n = rows[0]
        return first, last, int(n)

    async def profiles(self, user_ids: Sequence[uuid.UUID], min_confidence: float) -> list[dict[str, Any]]:
        """Profile fields and confident traits of the given readers."""
        return await self.db.fetch_all(_q("profiles"), {"user_ids": list(user_ids), "min_confidence": min_confidence})

