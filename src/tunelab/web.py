"""What both web apps share (the labeling app and the OpenAI-compatible server): HTTP
limits that hold against hostile clients, and running an app on uvicorn with them.

Two layers:

* ``RequestGuard`` (ASGI, wraps each app): the Host header against an allow-list (DNS
  rebinding), a header-only check before any body byte is read (the server's API key),
  then the body read by the guard itself, counting the bytes that actually arrive (not
  a header: chunked bodies and lying Content-Lengths are counted the same) and refusing
  past the bound (413) or past a deadline (408). The app sees the body only once it is
  whole and within bounds.
* ``guarded_protocol`` (uvicorn's h11 protocol, per connection): a deadline for each
  request's head, so a client that connects and sends nothing or trickles its headers
  is closed; a cap on open connections where a newcomer closes the longest-idle one
  instead of being refused, and only a server whose every connection is busy answers 503.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tunelab.web")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class HttpLimits:
    """Per-request and per-connection bounds of one server."""

    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body, counted as it arrives (413 past it)."})
    body_timeout: float = field(default=30.0, metadata={"help": "Seconds a request may take to send its body (408 past it)."})
    header_timeout: float = field(default=10.0, metadata={"help": "Seconds a connection may take to send a request's headers, from opening or from its previous response; slower connections are closed."})
    keep_alive_timeout: float = field(default=5.0, metadata={"help": "Seconds an idle keep-alive connection stays open."})
    max_connections: int = field(default=128, metadata={"help": "Most open connections. A new one closes the longest-idle connection to make room; with every connection busy, new requests get 503."})
    allowed_hosts: tuple[str, ...] = field(default=(), metadata={"help": "Host names the server answers to besides the address it is reached on and localhost ('*' = any): stops DNS rebinding."})

    def __post_init__(self) -> None:
        bad = [name for name, ok in (("max_body_bytes", self.max_body_bytes >= 1), ("body_timeout", self.body_timeout > 0),
                                     ("header_timeout", self.header_timeout > 0), ("keep_alive_timeout", self.keep_alive_timeout > 0),
                                     ("max_connections", self.max_connections >= 1)) if not ok]
        if bad:
            raise ValueError(f"HttpLimits: {', '.join(bad)} must be positive")


def json_error(message: str) -> dict[str, Any]:
    return {"error": message}


def error_id() -> str:
    """A short id that ties a generic 500 answer to its traceback in the server log."""
    return secrets.token_hex(6)


def internal_error_message(ident: str) -> str:
    return f"internal server error (error id {ident}; the server log has the detail)"


def log_internal_error(exc: BaseException, scope: dict) -> str:
    """Log an unexpected exception with a fresh id, once (the id is kept on it), and return the id."""
    ident = error_id()
    exc.tunelab_error_id = ident  # type: ignore[attr-defined]
    log.error("error %s in %s %s", ident, scope.get("method"), scope.get("path"), exc_info=exc)
    return ident


def host_name(header: str) -> str:
    """The name part of a Host header: 'example.com:8000' -> 'example.com', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, _, port = header.rpartition(":")
    return name if name and port.isdigit() and ":" not in name else header


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


class BodyTooLarge(Exception):
    pass


Refusal = tuple[int, dict[str, Any]]  # (status, JSON body)


class RequestGuard:
    """An ASGI wrapper that checks the Host header, runs ``authorize(scope)`` (headers only;
    it returns a Refusal or None), then reads the whole body itself, within
    ``limits.max_body_bytes`` and ``limits.body_timeout``, before the app sees the request.
    ``error`` shapes a refusal's JSON body. Refusals close the connection: the rest of
    the body is never read. An exception that escapes the app becomes a generic 500 with
    an id; the traceback goes to the log under that id, never to the client."""

    def __init__(self, app: Any, limits: HttpLimits, *, error: Callable[[str], dict[str, Any]] = json_error,
                 authorize: Callable[[dict], Refusal | None] | None = None) -> None:
        self.app, self.limits, self.error, self.authorize = app, limits, error, authorize

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.check_host(scope) or (self.authorize(scope) if self.authorize else None)
        if refusal is None:
            refusal, body = await self._read_body(scope, receive)
        if refusal is not None:
            return await self.refuse(*refusal, scope, receive, send)
        if body is None:
            return  # the client went away mid-body
        await self._run(scope, _replay(body, receive), send)

    def check_host(self, scope: dict) -> Refusal | None:
        """DNS rebinding: a page on evil.example that resolves its name to 127.0.0.1 reaches
        this server with ``Host: evil.example``. Answer only to the address the client
        connected to, localhost, and the names the operator allowed."""
        allowed = self.limits.allowed_hosts
        if "*" in allowed:
            return None
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        name = host_name(header)
        local = (scope.get("server") or ("",))[0] or ""
        known = [*LOCAL_NAMES, *(h.lower() for h in allowed), local]
        if name and any(_same_address(name, k) for k in known):
            return None
        return 421, self.error(f"this server does not answer to the host {name or '(none)'!r}; the operator can "
                               "allow it with --allowed-hosts")

    async def _read_body(self, scope: dict, receive: Callable[[], Awaitable[dict]]) -> tuple[Refusal | None, bytes | None]:
        limit = self.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return (413, self.error(f"request body over {limit} bytes")), None
        body = bytearray()
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None, None
                    body += message.get("body", b"")
                    if len(body) > limit:  # counted as it arrives: chunked or lying Content-Length alike
                        return (413, self.error(f"request body over {limit} bytes")), None
                    if not message.get("more_body", False):
                        return None, bytes(body)
        except TimeoutError:
            return (408, self.error(f"the request body took over {self.limits.body_timeout:g} s to arrive")), None

    async def refuse(self, status: int, body: dict[str, Any], scope: dict, receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        await JSONResponse(body, status, headers={"connection": "close"})(scope, receive, send)

    async def _run(self, scope: dict, receive: Any, send: Any) -> None:
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:  # noqa: BLE001 - the client gets a generic answer, the log the detail
            ident = getattr(exc, "tunelab_error_id", None) or log_internal_error(exc, scope)
            if not started:
                await self.refuse(500, self.error(internal_error_message(ident)), scope, receive, send)


def _replay(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    """A receive() that hands the app the body already read, then the real channel
    (which reports the client's disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict:
        return pending.pop() if pending else await receive()

    return replay


# -- connections ----------------------------------------------------------------------------
def guarded_protocol(limits: HttpLimits) -> type:
    """uvicorn's h11 protocol with a deadline for each request head and room made for
    new connections by closing the longest-idle one."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None
        idle_since = 0.0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()
            self._make_room()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request head arrived: its own deadlines take over
                self._head_arrived()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            if self.cycle is cycle and not self.transport.is_closing():
                self._await_head()  # the next request's head has its own deadline
            elif self.cycle is not cycle:
                self._head_arrived()  # a pipelined request was already waiting

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_arrived()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._head_arrived()
            self.idle_since = self.loop.time()
            self.head_timer = self.loop.call_later(limits.header_timeout, self._close)

        def _head_arrived(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _close(self) -> None:
            self.head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def _make_room(self) -> None:
            """Over the cap, close the connection that has waited longest for a request head
            (an idle keep-alive client reconnects; a slowloris loses its place)."""
            if len(self.connections) <= limits.max_connections:
                return
            idle = [c for c in self.connections if c is not self and getattr(c, "head_timer", None) is not None]
            if idle:
                min(idle, key=lambda c: c.idle_since)._close()

    return GuardedH11Protocol


def uvicorn_config(app: Any, host: str, port: int, limits: HttpLimits, **options: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http=guarded_protocol(limits),
        limit_concurrency=limits.max_connections + 1,  # uvicorn answers 503 from this many connections or requests
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout)), log_level="warning", **options)


def limits_of(app: Any) -> HttpLimits:
    """The limits a guarded app was built with (defaults for any other app)."""
    return getattr(app, "limits", None) or HttpLimits()


def run(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with its HTTP limits until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port, limits_of(app))).run()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LiveServer:
    """An ASGI app on a real uvicorn server, with the app's HTTP limits, in a thread on a
    free loopback port: for tests and benchmarks that need real sockets."""

    def __init__(self, app: Any, limits: HttpLimits | None = None) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port, limits or limits_of(app)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_secret_lines(path: str) -> list[str]:
    """Secrets from a file, one per line (blank lines and '#' comments skipped): keys on
    the command line are visible to every user in `ps`."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


def unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
