"""JSON responses encoded with orjson (FastAPI's ORJSONResponse is deprecated)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSONBody(JSONResponse):
    """A JSON response rendered by orjson (UUIDs, datetimes and dataclasses natively)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)
