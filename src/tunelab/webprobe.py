"""Hostile HTTP clients, to check a running tunelab server from outside as an attacker
would: raw sockets that stream endless bodies, hold idle connections, trickle headers.
The attack tests (tests/security/) and bench/abuse.py use them, with small and large
numbers. Each probe stops by itself; every server they talk to is on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 64 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A tunelab server (``tunelab serve ...`` or ``tunelab label serve ...``) in a process
    of its own on a free loopback port, so that its memory is its own. Its output goes to
    a log file (``log()``)."""

    def __init__(self, args: list[str], *, ready_path: str = "/health", headers: dict[str, str] | None = None,
                 timeout: float = 180, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = tempfile.NamedTemporaryFile(prefix="tunelab-server-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "tunelab", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        self._wait_ready(ready_path, headers or {}, timeout)

    def _wait_ready(self, path: str, headers: dict[str, str], timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + path, headers=headers, timeout=5).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def status(self) -> dict[str, float]:
        """Resident memory now and at its peak (MB), from /proc (Linux)."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log_file.close()


# -- raw HTTP --------------------------------------------------------------------------------
def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def read_status(sock: socket.socket, timeout: float = 10) -> int | None:
    """The status code of the answer on ``sock``, or None if the server closed (or reset)
    the connection without one."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            piece = sock.recv(4096)
            if not piece:
                break
            data += piece
    except OSError:
        pass
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


@dataclass
class BodyResult:
    status: int | None  # the server's answer, or None when it only closed the connection
    sent_bytes: int  # body bytes the client managed to send before the server stopped it
    seconds: float


def stream_body(port: int, path: str, total_bytes: int, headers: dict[str, str], *, chunked: bool,
                content_length: int | None = None) -> BodyResult:
    """POST a body of ``total_bytes`` (chunked, or raw after a Content-Length that may lie),
    as fast as the server takes it; stop when it answers or closes."""
    headers = dict(headers)
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    if content_length is not None:
        headers["Content-Length"] = str(content_length)
    started, sent = time.monotonic(), 0
    with connect(port) as sock:
        sock.sendall(request_head("POST", path, headers))
        piece = b"x" * CHUNK
        framed = f"{CHUNK:x}\r\n".encode() + piece + b"\r\n" if chunked else piece
        try:
            while sent < total_bytes:
                sock.sendall(framed)
                sent += CHUNK
        except OSError:  # the server closed the connection: what we want
            pass
        else:
            if chunked:
                try:
                    sock.sendall(b"0\r\n\r\n")
                except OSError:
                    pass
        return BodyResult(read_status(sock), sent, time.monotonic() - started)


def hold_idle_connections(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections that never send a byte."""
    sockets = []
    for _ in range(count):
        sock = connect(port)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of these connections the server has closed."""
    closed = 0
    for sock in sockets:
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def trickle_headers(port: int, interval: float, give_up_after: float) -> float | None:
    """Send a request head one byte every ``interval`` seconds; the seconds until the
    server closed the connection, or None if it never did within ``give_up_after``."""
    head = request_head("GET", "/health", {"Host": "127.0.0.1", "X-Padding": "p" * 200})
    started = time.monotonic()
    with connect(port) as sock:
        for byte in head:
            if time.monotonic() - started > give_up_after:
                return None
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(interval)
                if sock.recv(1) == b"":
                    return time.monotonic() - started
            except socket.timeout:
                continue
            except OSError:
                return time.monotonic() - started
    return None


# -- scenarios -------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One attack against one server, and how the server's legitimate users fared."""

    attack: str
    answer: str
    during_s: float | None  # a legitimate request's latency while the attack ran
    after_s: float  # and right after it
    after_status: int
    rss_before_mb: float
    rss_after_mb: float
    peak_rss_mb: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_growth_mb(self) -> float:
        return self.rss_after_mb - self.rss_before_mb


def timed(request: Callable[[], Any]) -> tuple[float, int]:
    started = time.monotonic()
    status = request().status_code
    return time.monotonic() - started, status


def run_attack(name: str, server: ServerProcess, attack: Callable[[], tuple[str, dict[str, Any]]],
               legit: Callable[[], Any], *, during_after: float | None = None) -> Outcome:
    """Run ``attack`` (which returns what the server answered, and details); if
    ``during_after`` is set, make a legitimate request that many seconds into the attack;
    then one after it."""
    before = server.status()["rss_mb"]
    during: list[float] = []
    probe = None
    if during_after is not None:
        def during_probe() -> None:
            time.sleep(during_after)
            during.append(timed(legit)[0])

        probe = threading.Thread(target=during_probe)
        probe.start()
    answer, detail = attack()
    if probe is not None:
        probe.join()
    after_s, after_status = timed(legit)
    memory = server.status()
    return Outcome(name, answer, during[0] if during else None, after_s, after_status, before, memory["rss_mb"],
                   memory["peak_rss_mb"], detail)


# -- the attacks: each returns (what the server answered, details) ---------------------------
def body_attack(port: int, path: str, headers: dict[str, str], total_bytes: int, *, chunked: bool,
                content_length: int | None = None) -> tuple[str, dict[str, Any]]:
    result = stream_body(port, path, total_bytes, headers, chunked=chunked, content_length=content_length)
    answer = f"{result.status or 'closed'} after {result.sent_bytes / 2**20:.1f} MB of {total_bytes / 2**20:.0f} MB"
    return answer, {"status": result.status, "sent_bytes": result.sent_bytes, "seconds": round(result.seconds, 2)}


def idle_attack(port: int, count: int, wait_s: float) -> tuple[str, dict[str, Any]]:
    """Hold ``count`` silent connections for ``wait_s`` seconds; how many the server closed."""
    sockets = hold_idle_connections(port, count)
    try:
        deadline = time.monotonic() + wait_s
        closed = closed_by_server(sockets)
        while closed < count and time.monotonic() < deadline:
            time.sleep(0.1)
            closed = closed_by_server(sockets)
        return f"closed {closed} of {count} within {wait_s:g} s", {"opened": count, "closed": closed}
    finally:
        for sock in sockets:
            sock.close()


def trickle_attack(port: int, interval: float, give_up_after: float) -> tuple[str, dict[str, Any]]:
    seconds = trickle_headers(port, interval, give_up_after)
    answer = "never closed" if seconds is None else f"closed after {seconds:.1f} s"
    return answer, {"closed_after_s": seconds}


def json_attack(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """POST a hand-made JSON body (one httpx would not make: lone surrogates, say)."""
    import httpx

    answer = httpx.post(url + path, content=body, headers={**headers, "Content-Type": "application/json"}, timeout=60)
    try:
        error = answer.json().get("error")
    except ValueError:
        error = answer.text[:200]
    message = error.get("message") if isinstance(error, dict) else error
    return f"{answer.status_code}: {str(message)[:80]}", {"status": answer.status_code, "message": message}


def stalled_reader_attack(port: int, count: int, request: bytes, pipelined: int, wait_s: float) -> tuple[str, dict[str, Any]]:
    """``count`` connections that pipeline ``pipelined`` requests and never read the
    answers (a tiny receive window); after ``wait_s``, how many the server had dropped
    (their answers cut short) rather than kept waiting for the reader."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request * pipelined)
        sockets.append(sock)
    time.sleep(wait_s)
    outcomes = [_drain(sock) for sock in sockets]
    counts = {kind: outcomes.count(kind) for kind in ("refused", "dropped", "served", "held")}
    return (f"of {count}: {counts['refused']} refused (503), {counts['dropped']} dropped, {counts['served']} served in "
            f"full, {counts['held']} still open"), {"opened": count, **counts}


def _drain(sock: socket.socket) -> str:
    """Read what the server sent: 'refused' (it ended on a 503: the server was full when a
    request came), 'dropped' (reset, or closed before any answer), 'served' (answers,
    then an ordinary close) or 'held' (still open)."""
    sock.settimeout(2)
    tail = b""
    try:
        while piece := sock.recv(1 << 20):
            tail = (tail + piece)[-4096:]
        return "refused" if b"HTTP/1.1 503" in tail else "served" if tail else "dropped"
    except socket.timeout:
        return "held"  # still open: the server waits on this reader, or is still answering its requests
    except OSError:
        return "refused" if b"HTTP/1.1 503" in tail else "dropped"
    finally:
        sock.close()


def slow_body_attack(port: int, count: int, path: str, headers: dict[str, str], hold_s: float) -> tuple[str, dict[str, Any]]:
    """``count`` requests whose bodies arrive at one byte a second; after ``hold_s``, how
    many connections the server had dropped to make room for others."""
    sockets = []
    for _ in range(count):
        sock = connect(port)
        sock.sendall(request_head("POST", path, {**headers, "Content-Length": "60000"}) + b"{")
        sockets.append(sock)
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        for sock in sockets:
            try:
                sock.sendall(b" ")
            except OSError:
                pass
        time.sleep(1)
    states = [connection_state(sock) for sock in sockets]
    for sock in sockets:
        sock.close()
    refused, dropped = sum(s.startswith("answered") for s in states), states.count("closed")
    return (f"{refused} of {count} refused ({', '.join(sorted(set(s for s in states if s.startswith('answered'))))}), "
            f"{dropped} dropped after {hold_s:g} s"), {"opened": count, "refused": refused, "dropped": dropped}


def connection_state(sock: socket.socket) -> str:
    """'open' (nothing from the server yet), 'closed' (dropped without an answer) or
    'answered NNN'."""
    sock.setblocking(False)
    try:
        data = sock.recv(64)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    parts = data.split(b" ")
    return f"answered {parts[1].decode()}" if data.startswith(b"HTTP/") and len(parts) > 1 else "closed"
