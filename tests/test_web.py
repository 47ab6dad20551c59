"""The request guard both web apps share, as a plain ASGI wrapper around a recording app:
bodies counted as they arrive, deadlines, the Host allow-list, generic 500s."""

import asyncio
import json
import logging

import pytest

from tunelab.web import HttpLimits, RequestGuard, host_name


class Recorder:
    """An ASGI app that records the body it was given and answers 200."""

    def __init__(self, fail=False):
        self.bodies, self.fail = [], fail

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.bodies.append(message["body"])
        assert message["more_body"] is False
        if self.fail:
            raise RuntimeError("secret detail")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(guard, chunks, headers=(), host=b"127.0.0.1:8000", delay=0.0, server=("127.0.0.1", 8000)):
    """Run one request through ``guard``; ``chunks`` arrive one receive() at a time."""
    scope = {"type": "http", "method": "POST", "path": "/x", "server": server,
             "headers": [(b"host", host), *headers]}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    received, sent = [], []

    async def receive():
        if delay:
            await asyncio.sleep(delay)
        if pending:
            received.append(pending[0]["body"])
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, received


def test_bodies_are_counted_as_they_arrive_not_by_header():
    app = Recorder()
    guard = RequestGuard(app, HttpLimits(max_body_bytes=100))
    assert call(guard, [b"a" * 60, b"b" * 40])[0] == 200 and app.bodies == [b"a" * 60 + b"b" * 40]
    # chunked, no Content-Length: refused at the chunk that crosses the bound, the rest never read
    status, headers, body, received = call(guard, [b"a" * 60, b"b" * 60, b"c" * 60])
    assert status == 413 and headers[b"connection"] == b"close" and len(received) == 2
    assert "over 100 bytes" in json.loads(body)["error"]
    # a Content-Length that lies low is no help
    assert call(guard, [b"a" * 60] * 3, headers=[(b"content-length", b"2")])[0] == 413
    # an honest one over the bound is refused before a byte is read
    status, _, _, received = call(guard, [b"a" * 200], headers=[(b"content-length", b"200")])
    assert status == 413 and received == []
    assert len(app.bodies) == 1  # the app saw only the request within bounds


def test_a_slow_body_gets_408_and_a_gone_client_nothing():
    app = Recorder()
    guard = RequestGuard(app, HttpLimits(body_timeout=0.2))
    assert call(guard, [b"a", b"b", b"c", b"d"], delay=0.1)[0] == 408
    assert app.bodies == []


def test_the_host_header_must_name_this_server():
    app = Recorder()
    guard = RequestGuard(app, HttpLimits())
    for host in (b"127.0.0.1:8000", b"localhost", b"LOCALHOST:80", b"[::1]:8000"):
        assert call(guard, [b""], host=host)[0] == 200, host
    status, _, body, received = call(guard, [b"{}"], host=b"evil.example:8000")
    assert status == 421 and "evil.example" in json.loads(body)["error"] and received == []
    assert call(guard, [b""], host=b"")[0] == 421
    # the address the client connected to is allowed (a server bound to 0.0.0.0, reached by IP)
    assert call(guard, [b""], host=b"10.1.2.3:8000", server=("10.1.2.3", 8000))[0] == 200
    named = RequestGuard(app, HttpLimits(allowed_hosts=("labels.example.org",)))
    assert call(named, [b""], host=b"labels.example.org")[0] == 200
    assert call(RequestGuard(app, HttpLimits(allowed_hosts=("*",))), [b""], host=b"anything")[0] == 200


def test_an_escaping_exception_is_a_generic_500_with_its_detail_in_the_log(caplog):
    guard = RequestGuard(Recorder(fail=True), HttpLimits())
    with caplog.at_level(logging.ERROR, logger="tunelab.web"):
        status, _, body, _ = call(guard, [b"{}"])
    message = json.loads(body)["error"]
    assert status == 500 and "secret detail" not in message and "error id" in message
    ident = message.split("error id ")[1].split(";")[0]
    assert ident in caplog.text and "secret detail" in caplog.text


@pytest.mark.parametrize("header, name", [("example.com:8000", "example.com"), ("Example.COM", "example.com"),
                                          ("[::1]:80", "::1"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1")])
def test_host_name(header, name):
    assert host_name(header) == name


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_body_bytes"):
        HttpLimits(max_body_bytes=0)


def test_host_names_are_normalised_and_junk_is_no_host():
    assert host_name("[::1]junk") == "" and host_name("[::1") == "" and host_name("example.com.") == "example.com"
    guard = RequestGuard(Recorder(), HttpLimits())
    # a dual-stack socket sees an IPv4 client's connection as ::ffff:a.b.c.d
    assert call(guard, [b""], host=b"10.1.2.3:8000", server=("::ffff:10.1.2.3", 8000))[0] == 200


# -- connections, on a real uvicorn server ------------------------------------------------------
class Slow:
    """An app that answers after a while, asking meanwhile whether its client left (as the
    server's completion endpoint does), or at once for GET /fast."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        if scope["path"] != "/fast":
            for _ in range(40):
                await asyncio.sleep(0.1)
                try:
                    await asyncio.wait_for(receive(), 0.001)
                except asyncio.TimeoutError:
                    pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def slow_server():
    from tunelab.web import LiveServer

    limits = HttpLimits(max_body_bytes=64 * 1024, max_connections=2, header_timeout=5, body_timeout=20)
    server = LiveServer(RequestGuard(Slow(), limits), limits)
    yield server
    server.close()


def test_bytes_sent_ahead_of_an_answer_are_bounded(slow_server):
    """A client sends a request, then junk while it is answered: h11 holds what it cannot
    parse yet, unbounded but for the guard's cap (the body bound + 64 KB)."""
    import time

    from tunelab.webprobe import connect, read_status, request_head

    started = time.monotonic()
    with connect(slow_server.port) as sock:
        sock.sendall(request_head("GET", "/slow", {"Host": "127.0.0.1"}))
        sent = 0
        try:
            while sent < 64 * 2**20:
                sock.sendall(b"j" * 65536)
                sent += 65536
        except OSError:
            pass
        dropped_after = time.monotonic() - started
        assert read_status(sock, timeout=5) is None  # dropped: never answered (the app takes 4 s)
    assert dropped_after < 3 and sent < 64 * 2**20


def test_a_newcomer_takes_the_place_of_a_body_that_trickles(slow_server):
    """Both places held by bodies arriving at a byte a second: a new request still gets in."""
    import time

    import httpx

    from tunelab.webprobe import connect, request_head

    holders = [connect(slow_server.port) for _ in range(2)]
    for sock in holders:
        sock.sendall(request_head("POST", "/slow", {"Host": "127.0.0.1", "Content-Length": "60000"}) + b"x")
    time.sleep(2.5)  # past the grace period: they are now slower than MIN_BODY_RATE
    answer = httpx.get(slow_server.url + "/fast", timeout=10)
    assert answer.status_code == 200
    for sock in holders:
        sock.close()


def test_a_client_that_never_reads_its_answers_is_dropped():
    """Pipelined requests whose answers are never read: the connection is dropped after
    send_timeout, instead of holding its place until the client reads."""
    import socket
    import time

    from tunelab.web import LiveServer
    from tunelab.webprobe import request_head

    class Big:
        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1048576")]})
            await send({"type": "http.response.body", "body": b"x" * 1048576})

    limits = HttpLimits(max_connections=4, send_timeout=1, keep_alive_timeout=30, header_timeout=30)
    server = LiveServer(RequestGuard(Big(), limits), limits)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request_head("GET", "/", {"Host": "127.0.0.1"}) * 16)  # 16 MB of answers, never read
        time.sleep(2.5)
        received = 0
        sock.settimeout(5)
        try:
            while piece := sock.recv(1 << 20):
                received += len(piece)
        except OSError:
            pass
        assert received < 16 * 1048576  # cut off, not delivered in full
        sock.close()
    finally:
        server.close()
