"""Pieces both web apps share (the labeling app and the OpenAI-compatible server)."""

from __future__ import annotations

import socket
import threading
import time
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


class LiveServer:
    """An ASGI app on a real uvicorn server in a thread, on a free loopback port: for tests
    and benchmarks that need real sockets (concurrent clients, streaming)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
