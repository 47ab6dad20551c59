"""Pieces both web apps share (the labeling app and the OpenAI-compatible server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse


def json_error(message: str) -> dict[str, Any]:
    return {"error": message}


class BodyLimit:
    """Refuse request bodies without a Content-Length (411) or over ``limit`` bytes (413)
    before they are read, so no request can make the server buffer an unbounded body.
    ``error`` shapes the JSON body of the refusal."""

    def __init__(self, app: Any, limit: int, error: Callable[[str], dict[str, Any]] = json_error) -> None:
        self.app, self.limit, self.error = app, limit, error

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            if length is None or not length.isdigit():
                return await JSONResponse(self.error("a request body needs a Content-Length"), 411)(scope, receive, send)
            if int(length) > self.limit:
                return await JSONResponse(self.error(f"request body over {self.limit} bytes"), 413)(scope, receive, send)
        await self.app(scope, receive, send)
