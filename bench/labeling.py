"""Load test of the labeling app: concurrent labelers, a server crash midway, no lost or
doubled judgement.

    python bench/labeling.py [--labelers 50] [--submissions 2000] [--out runs/bench/labeling.json]

A database of submissions / 5 prompts x 4 completions (5 labels per prompt) and one token
per labeler; `tunelab label serve` runs as a separate process on loopback. Each labeler
is a thread that asks for its next prompt and submits a ranking with a fresh submission
id, resending the same id after any connection error or timeout until the server
acknowledges it (201 stored, or 200 'already stored'). When half the submissions are
acknowledged the server is killed with SIGKILL (no clean shutdown) and started again.
Afterwards the database must hold every acknowledged submission exactly once, and
nothing else. Prints throughput, latency percentiles and the outage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from tunelab.feedback.store import LabelStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "tunelab", "label", "serve", "--db", str(db), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"the server exited: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    raise SystemExit("the server did not start within 60 s")


class Labeler(threading.Thread):
    def __init__(self, base: str, token: str, stop: threading.Event, acked: list, latencies: list, counters: dict, lock: threading.Lock):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.stop, self.acked, self.latencies, self.counters, self.lock = stop, acked, latencies, counters, lock

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Retry through connection errors and timeouts (the server may be down)."""
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                response = self.client.request(method, path, **kwargs)
            except (httpx.TransportError, httpx.TimeoutException):
                with self.lock:
                    self.counters["retries"] += 1
                time.sleep(0.05)
                continue
            if method == "POST":
                with self.lock:
                    self.latencies.append(time.perf_counter() - started)
            return response
        raise InterruptedError

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                prompt = self._call("GET", "/api/next").json()["prompt"]
                if prompt is None:
                    return
                ids = [c["id"] for c in prompt["completions"]]
                ranks = {str(i): r for i, r in zip(ids, [1, 2, 2, None])}
                body = {"prompt_id": prompt["id"], "submission_id": uuid.uuid4().hex, "ranks": ranks}
                response = self._call("POST", "/api/judgements", json=body)
                if response.status_code not in (200, 201):
                    with self.lock:
                        self.counters["refused"] += 1
                        self.counters.setdefault("refusals", []).append(response.text[:200])
                    continue
                with self.lock:
                    self.acked.append(body["submission_id"])
                    self.counters["duplicates"] += response.status_code == 200
        except InterruptedError:
            return


def build_db(folder: Path, labelers: int, submissions: int, labels_per_prompt: int) -> tuple[Path, list[str]]:
    db = folder / "labels.sqlite"
    store = LabelStore(db, create=True)
    store.set_setting("labels_per_prompt", str(labels_per_prompt))
    for i in range(submissions // labels_per_prompt):
        store.add_prompt(f"Prompt {i}: summarise the dialogue.", [f"Completion {i}.{j}" for j in range(4)])
    tokens = [store.add_user(f"labeler{n:02d}") for n in range(labelers)]
    store.close()
    return db, tokens


def run(labelers: int, submissions: int, folder: Path, kill: bool = True) -> dict:
    db, tokens = build_db(folder, labelers, submissions, labels_per_prompt=5)
    port = free_port()
    server = start_server(db, port)
    stop, lock = threading.Event(), threading.Lock()
    acked: list[str] = []
    latencies: list[float] = []
    counters = {"retries": 0, "refused": 0, "duplicates": 0}
    threads = [Labeler(f"http://127.0.0.1:{port}", t, stop, acked, latencies, counters, lock) for t in tokens]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    outage = None
    if kill:
        while len(acked) < submissions // 2 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        killed_at = time.perf_counter()
        server.send_signal(signal.SIGKILL)
        server.wait()
        acked_at_kill = len(acked)
        server = start_server(db, port)
        outage = time.perf_counter() - killed_at
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.perf_counter() - started
    stop.set()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)

    connection = sqlite3.connect(db)
    stored = [r[0] for r in connection.execute("SELECT submission_id FROM judgements")]
    over = connection.execute("SELECT COUNT(*) FROM (SELECT prompt_id FROM judgements GROUP BY prompt_id HAVING COUNT(*) > 5)").fetchone()[0]
    connection.close()
    latencies.sort()
    return {
        "labelers": labelers, "submissions_acknowledged": len(acked), "distinct_acknowledged": len(set(acked)),
        "rows_in_database": len(stored), "acknowledged_missing": len(set(acked) - set(stored)),
        "rows_not_acknowledged": len(set(stored) - set(acked)), "rows_stored_twice": len(stored) - len(set(stored)),
        "prompts_over_limit": over, "killed_after": acked_at_kill if kill else None,
        "outage_seconds": None if outage is None else round(outage, 2),
        "retried_requests": counters["retries"], "duplicate_acks": counters["duplicates"], "refused": counters["refused"],
        "refusals": counters.get("refusals", [])[:5],
        "seconds": round(elapsed, 2), "submissions_per_second": round(len(acked) / elapsed, 1),
        "post_latency_ms_p50": round(1000 * statistics.median(latencies), 1),
        "post_latency_ms_p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labelers", type=int, default=50)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--no-kill", action="store_true", help="skip the crash and restart")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/labeling.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(args.labelers, args.submissions, Path(folder), kill=not args.no_kill)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = (result["acknowledged_missing"] == 0 and result["rows_not_acknowledged"] == 0 and result["rows_stored_twice"] == 0
          and result["distinct_acknowledged"] == args.submissions and result["prompts_over_limit"] == 0)
    print("every acknowledged submission is stored exactly once" if ok else "FAILED: see the counts above")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
