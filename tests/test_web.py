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
