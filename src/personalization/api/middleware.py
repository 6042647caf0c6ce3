"""Pure ASGI middleware (no per-request Request/Response objects: cheap on every route)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from personalization.errors import FieldError, InvalidInput

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_json(send: Send, status: int, detail: list[dict[str, Any]]) -> None:
    body = orjson.dumps({"detail": detail})
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 (400 for a malformed Content-Length).

    A declared Content-Length is checked before the app runs; a chunked body is
    counted as it arrives and stopped at the limit (the app's InvalidInput handler
    answers), so no route ever buffers more than the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> list[dict[str, Any]]:
        return [{"loc": ["body"], "field": "", "msg": f"request body over {self.max_bytes} bytes",
                 "type": "too_large"}]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, [{"loc": ["header", "content-length"], "field": "content-length",
                                                  "msg": "not a number", "type": "value_error"}])
                    return
                if declared > self.max_bytes:
                    await _send_json(send, 413, self._too_large())
                    return
                break
        received = 0
        limit = self.max_bytes

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise InvalidInput([FieldError(["body"], f"request body over {limit} bytes", "too_large")], 413)
            return message

        await self.app(scope, counted, send)
