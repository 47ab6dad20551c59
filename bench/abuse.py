"""Both servers under the attack suite's scenarios, with larger numbers.

    python bench/abuse.py [--model smollm2-135m-instruct] [--idle 2000] [--parallel 32] [--out runs/bench/abuse.json]

Starts `tunelab serve` (the model, an API key from a file) and `tunelab label serve` (a
fresh database) as processes of their own on loopback, with their default limits, then
runs each attack from this process: 1 GB bodies (chunked, chunked under a lying
Content-Length, an honest 1 GB Content-Length, without a key, to an unknown path), several
at once; thousands of idle connections; a request head trickled a byte at a time; more
bodies arriving at a byte a second than the server has places; more clients that pipeline
thousands of requests and never read the answers than it has places; ~29,000 chat
messages in one body; lone surrogates; a chat message with an image part; a foreign Host header; a cross-site sign-in.
For each it prints what the server answered, a legitimate request's latency during the
attack and right after it (a one-token completion; the labeling progress page), and the
server's resident memory before, after and at its peak. Writes runs/bench/abuse.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tunelab.webprobe import (ServerProcess, body_attack, idle_attack, json_attack, request_head, run_attack, slow_body_attack,
                              stalled_reader_attack, trickle_attack)

GB = 2**30
KEY = "bench-api-key-0123456789abcdef"


def parallel(count: int, attack):
    """``count`` copies of an attack at once; the first one's answer, every detail."""
    def run():
        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(lambda _: attack(), range(count)))
        answers = sorted({r[0].split(" after ")[0] for r in results})
        sent = max(r[1].get("sent_bytes", 0) for r in results)
        return f"{count}x: {', '.join(answers)} (at most {sent / 2**20:.1f} MB sent each)", {"runs": [r[1] for r in results]}
    return run


def serving_attacks(server: ServerProcess, args: argparse.Namespace) -> list:
    auth = {"Host": "127.0.0.1", "Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    no_key = {k: v for k, v in auth.items() if k != "Authorization"}
    port, url = server.port, server.url
    messages = json.dumps({"model": "base", "messages": [{"role": "user", "content": "a"}] * 29_000}).encode()
    return [
        ("1 GB chunked, no key", parallel(args.parallel, lambda: body_attack(port, "/v1/completions", no_key, GB, chunked=True)), 0.5),
        ("1 GB chunked", parallel(args.parallel, lambda: body_attack(port, "/v1/completions", auth, GB, chunked=True)), 0.5),
        ("1 GB chunked, Content-Length: 2", parallel(args.parallel, lambda: body_attack(
            port, "/v1/completions", auth, GB, chunked=True, content_length=2)), 0.5),
        ("Content-Length: 1 GB", parallel(args.parallel, lambda: body_attack(
            port, "/v1/completions", auth, GB, chunked=False, content_length=GB)), 0.5),
        ("1 GB chunked to an unknown path, no key", parallel(args.parallel, lambda: body_attack(
            port, "/elsewhere", no_key, GB, chunked=True)), 0.5),
        (f"{args.idle} idle connections", lambda: idle_attack(port, args.idle, wait_s=15), 2.0),
        ("header trickle (1 byte / 0.5 s)", lambda: trickle_attack(port, 0.5, give_up_after=60), 1.0),
        ("160 bodies at 1 byte/s", lambda: slow_body_attack(port, 160, "/v1/completions", auth, hold_s=8), 5.0),
        ("160 clients that never read, 3,000 pipelined requests each", lambda: stalled_reader_attack(
            port, 160, request_head("GET", "/v1/models", auth), 3000, wait_s=35), 10.0),
        ("29,000 chat messages", lambda: json_attack(url, "/v1/chat/completions", messages, auth), None),
        ("lone surrogate", lambda: json_attack(url, "/v1/completions", b'{"model": "base", "prompt": "\\ud800"}', auth), None),
        ("chat message with an image part", lambda: json_attack(
            url, "/v1/chat/completions", json.dumps({"model": "base", "max_tokens": 1, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}).encode(), auth), None),
        ("Host: rebind.evil.example", lambda: json_attack(url, "/v1/completions", b"{}", {**auth, "Host": "rebind.evil.example"}), None),
    ]


def labeling_attacks(server: ServerProcess, args: argparse.Namespace, token: str) -> list:
    plain = {"Host": "127.0.0.1", "Content-Type": "application/json"}
    port = server.port

    def cross_site_login():
        answer = httpx.post(server.url + "/login", data={"token": token}, headers={"Origin": "http://evil.example"})
        return f"{answer.status_code}, cookie set: {'set-cookie' in answer.headers}", {"status": answer.status_code}

    return [
        ("1 GB chunked, not signed in", parallel(args.parallel, lambda: body_attack(port, "/api/judgements", plain, GB, chunked=True)), 0.5),
        ("1 GB chunked, Content-Length: 2", parallel(args.parallel, lambda: body_attack(
            port, "/api/judgements", plain, GB, chunked=True, content_length=2)), 0.5),
        (f"{args.idle} idle connections", lambda: idle_attack(port, args.idle, wait_s=15), 2.0),
        ("header trickle (1 byte / 0.5 s)", lambda: trickle_attack(port, 0.5, give_up_after=60), 1.0),
        ("160 clients that never read, 3,000 pipelined requests each", lambda: stalled_reader_attack(
            port, 160, request_head("GET", "/static/label.js", {"Host": "127.0.0.1"}), 3000, wait_s=35), 10.0),
        ("cross-site sign-in", cross_site_login, None),
    ]


def run_all(name: str, server: ServerProcess, attacks: list, legit) -> list[dict]:
    for _ in range(3):
        legit()  # warm up
    rows = []
    for attack_name, attack, during in attacks:
        outcome = run_attack(attack_name, server, attack, legit, during_after=during)
        row = {"server": name, "attack": attack_name, "answer": outcome.answer,
               "legit_during_s": None if outcome.during_s is None else round(outcome.during_s, 3),
               "legit_after_s": round(outcome.after_s, 3), "legit_after_status": outcome.after_status,
               "rss_before_mb": round(outcome.rss_before_mb, 1), "rss_after_mb": round(outcome.rss_after_mb, 1),
               "peak_rss_mb": round(outcome.peak_rss_mb, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        time.sleep(1.5)  # let the server close what the attack left behind
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections to open (default 2000)")
    parser.add_argument("--parallel", type=int, default=32, help="body attacks at once (default 32)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/abuse.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunelab-abuse-"))
    (work / "keys").write_text(KEY + "\n")
    from tunelab.feedback.store import LabelStore

    store = LabelStore(work / "labels.sqlite", create=True)
    for i in range(20):
        store.add_prompt(f"Prompt {i}?", [f"answer {i}a", f"answer {i}b"])
    token = store.add_user("ann")
    store.close()

    rows = []
    server = ServerProcess(["serve", "--model", args.model, "--api-key-file", str(work / "keys")])
    try:
        legit = lambda: httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,  # noqa: E731
                                   json={"model": "base", "prompt": "Hello", "max_tokens": 1, "temperature": 0})
        rows += run_all("tunelab serve", server, serving_attacks(server, args), legit)
    finally:
        server.close()
    server = ServerProcess(["label", "serve", "--db", str(work / "labels.sqlite")], ready_path="/login")
    try:
        legit = lambda: httpx.get(server.url + "/api/progress", headers={"Authorization": f"Bearer {token}"}, timeout=60)  # noqa: E731
        rows += run_all("tunelab label serve", server, labeling_attacks(server, args, token), legit)
    finally:
        server.close()

    print("\n| server | attack | server's answer | legit request during | after | RSS before → after (peak), MB |")
    print("|---|---|---|---:|---:|---|")
    for r in rows:
        during = "—" if r["legit_during_s"] is None else f"{r['legit_during_s']:.2f} s"
        print(f"| {r['server']} | {r['attack']} | {r['answer']} | {during} | {r['legit_after_s']:.2f} s "
              f"({r['legit_after_status']}) | {r['rss_before_mb']:.0f} → {r['rss_after_mb']:.0f} ({r['peak_rss_mb']:.0f}) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "idle": args.idle, "parallel": args.parallel, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
