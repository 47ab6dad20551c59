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
    send_timeout: float = field(default=30.0, metadata={"help": "Seconds a client may leave the server's answer unread before its connection is dropped."})
    max_connections: int = field(default=128, metadata={"help": "Most open connections. A new one drops an idle (or very slow) connection to make room; with every connection busy, new requests get 503."})
    allowed_hosts: tuple[str, ...] = field(default=(), metadata={"help": "Host names the server answers to besides the address it is reached on and localhost ('*' = any): stops DNS rebinding."})

    def __post_init__(self) -> None:
        bad = [name for name, ok in (("max_body_bytes", self.max_body_bytes >= 1), ("body_timeout", self.body_timeout > 0),
                                     ("header_timeout", self.header_timeout > 0), ("keep_alive_timeout", self.keep_alive_timeout > 0),
                                     ("send_timeout", self.send_timeout > 0),
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
    """The name part of a Host header: 'example.com:8000' -> 'example.com', '[::1]:80' ->
    '::1', 'Example.COM.' -> 'example.com'; '' for what is not a host."""
    header = header.strip().lower()
    if header.startswith("["):
        inside, bracket, rest = header[1:].partition("]")
        return inside if bracket and (not rest or (rest[0] == ":" and rest[1:].isdigit())) else ""
    name, _, port = header.rpartition(":")
    name = name if name and port.isdigit() and ":" not in name else header
    return name.rstrip(".")


def _address(text: str) -> Any:
    """An IP address, IPv4-mapped IPv6 ('::ffff:10.0.0.1', a dual-stack socket's view of an
    IPv4 client) as its IPv4 self; None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def _same_address(a: str, b: str) -> bool:
    first, second = _address(a), _address(b)
    return first == second if first is not None and second is not None else a == b


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
                 authorize: Callable[[dict], Refusal | None] | None = None, headers: dict[str, str] | None = None) -> None:
        self.app, self.limits, self.error, self.authorize = app, limits, error, authorize
        self.headers = headers or {}  # on the guard's own answers too (an app's security headers)

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
        replay = _replay(body, receive)
        del body  # the app holds the only reference: it can free the body when it is done with it
        await self._run(scope, replay, send)

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

        await JSONResponse(body, status, headers={**self.headers, "connection": "close"})(scope, receive, send)

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
MIN_BODY_RATE = 16 * 1024  # bytes/s; under contention, a body arriving slower than this loses its place


def guarded_protocol(limits: HttpLimits) -> type:
    """uvicorn's h11 protocol, bounded per connection: a deadline for each request head; a
    deadline for a client that stops reading its answer; a bound on what a client may
    send ahead while its request is being answered; and, at the connection cap, room made
    for a newcomer by dropping the connection that holds its place for least."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    ahead_limit = limits.max_body_bytes + 64 * 1024  # one pipelined request, head and body

    class GuardedH11Protocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None
        send_timer: asyncio.TimerHandle | None = None
        idle_since = 0.0  # when it began waiting for a request head
        head_at = 0.0  # when its current request's head arrived
        body_bytes = 0  # bytes received since then
        paused_at = 0.0  # when the client stopped reading our answer

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()
            self._make_room()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request head arrived: its own deadlines take over
                self._head_arrived()
            else:
                self.body_bytes += len(data)
            # Bytes sent ahead while a request is answered wait in h11's buffer, which h11
            # bounds only while it expects a head: bound them here.
            if len(self.conn.trailing_data[0]) > ahead_limit:
                self.drop()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            if self.cycle is cycle and not self.transport.is_closing():
                self._await_head()  # the next request's head has its own deadline
            elif self.cycle is not cycle:
                self._head_arrived()  # a pipelined request was already waiting

        def pause_writing(self) -> None:
            """The client is not reading what we send: it gets ``send_timeout`` to resume."""
            super().pause_writing()
            if self.send_timer is None:
                self.paused_at = self.loop.time()
                self.send_timer = self.loop.call_later(limits.send_timeout, self.drop)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._cancel("send_timer")

        def timeout_keep_alive_handler(self) -> None:
            self.drop()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel("head_timer")
            self._cancel("send_timer")
            super().connection_lost(exc)

        def drop(self) -> None:
            """Close at once, unsent answer and all: a close() would wait for a client that
            may never read, holding its place."""
            self._cancel("head_timer")
            self._cancel("send_timer")
            self.transport.abort()

        def _await_head(self) -> None:
            self._cancel("head_timer")
            self.idle_since = self.loop.time()
            self.head_timer = self.loop.call_later(limits.header_timeout, self.drop)

        def _head_arrived(self) -> None:
            self._cancel("head_timer")
            self.head_at, self.body_bytes = self.loop.time(), 0

        def _cancel(self, name: str) -> None:
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

        def _make_room(self) -> None:
            """Over the cap, drop a connection that holds its place without using it: one
            already closing, else the one that has waited longest for a request head (an
            idle keep-alive client reconnects; a slowloris loses its place), else the
            slowest of those sending a body slower than MIN_BODY_RATE, else the one whose
            client has longest left our answer unread (2 s grace for each)."""
            if len(self.connections) <= limits.max_connections:
                return
            others = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol)]
            closing = [c for c in others if c.transport.is_closing()]
            idle = sorted((c for c in others if c.head_timer is not None), key=lambda c: c.idle_since)
            now = self.loop.time()
            slow = sorted((c for c in others if c.conn.their_state is h11.SEND_BODY and now - c.head_at > 2
                           and c.body_bytes / (now - c.head_at) < MIN_BODY_RATE),
                          key=lambda c: c.body_bytes / (now - c.head_at))
            stalled = sorted((c for c in others if c.send_timer is not None and now - c.paused_at > 2),
                             key=lambda c: c.paused_at)
            victim = (closing or idle or slow or stalled or [None])[0]
            if victim is not None:
                victim.drop()

    return GuardedH11Protocol


def uvicorn_config(app: Any, host: str, port: int, limits: HttpLimits, **options: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http=guarded_protocol(limits), ws="none",  # no WebSocket upgrades: nothing uses them
        limit_concurrency=limits.max_connections + 1,  # uvicorn answers 503 from this many connections or requests
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout)), timeout_graceful_shutdown=10,
        log_level="warning", **options)


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
