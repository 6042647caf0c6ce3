"""Helpers of the read-path tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import numpy as np
import psycopg

from personalization.core import embedding as emb

DIM = 384


async def make_user(client: httpx.AsyncClient, **fields: Any) -> uuid.UUID:
    uid = uuid.uuid4()
    body = {"denomination": "baptist", "preferred_translation": "KJV"} | fields
    r = await client.put(f"/v1/users/{uid}", json=body)
    assert r.status_code == 201, r.text
    return uid


async def add_trait(client: httpx.AsyncClient, uid: uuid.UUID, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/users/{uid}/traits", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return emb.normalize(v)


def insert_content(db_url: str, items: dict[str, np.ndarray | None], content_type: str = "passage") -> None:
    """Content rows (and embeddings where given) straight into the tables."""
    with psycopg.connect(db_url) as conn:
        for cid, vec in items.items():
            conn.execute(
                "INSERT INTO content_items (content_id, content_type) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (cid, content_type),
            )
            if vec is not None:
                conn.execute(
                    "INSERT INTO content_embeddings (content_id, model, dim, embedding) VALUES (%s, 'test', %s, %s)",
                    (cid, len(vec), emb.encode(vec)),
                )


def put_user_embedding(db_url: str, uid: uuid.UUID, vec: np.ndarray) -> None:
    """A durable user embedding as the online learner stores it (raw float64 sum, unit float32 copy)."""
    with psycopg.connect(db_url) as conn:
        cols = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'user_embeddings'"
            )
        }
        if "raw_sum" in cols:
            conn.execute(
                "INSERT INTO user_embeddings (user_id, dim, raw_sum, ref_time, event_count, embedded_count, embedding)"
                " VALUES (%s, %s, %s, now(), 1, 1, %s)",
                (uid, len(vec), np.asarray(vec, dtype="<f8").tobytes(), emb.encode(emb.normalize(vec))),
            )
        else:
            conn.execute(
                "INSERT INTO user_embeddings (user_id, dim, embedding) VALUES (%s, %s, %s)",
                (uid, len(vec), emb.encode(vec)),
            )


class RedisProxy:
    """A TCP proxy in front of the real Redis that a test can cut, slow down and restore."""

    def __init__(self, target_port: int = 6379) -> None:
        self.target_port = target_port
        self.port = 0
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones (Redis 'goes away')."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)  # the injected latency of a slow Redis
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
