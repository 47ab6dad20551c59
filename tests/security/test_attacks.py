"""Attacks on real running servers, from raw sockets and from httpx. After each, a
legitimate request must succeed within two seconds and the server's memory must stay
within a few MB of where it was. bench/abuse.py runs the same attacks with larger numbers."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.security.conftest import ADMIN_TOKEN, API_KEY, SLIDING_WINDOW, dumps, legit_completion, legit_labeling
from tunelab.webprobe import (body_attack, idle_attack, json_attack, request_head, run_attack, slow_body_attack,
                              stalled_reader_attack, trickle_attack)

GB = 2**30
MEMORY_SLACK_MB = 16  # what the server may grow by during one attack (allocator noise included)
SOCKET_BUFFERS = 8 * 2**20  # bytes the kernel can take before the server reads them (send + receive buffers)


def assert_unharmed(outcome):
    assert outcome.after_status == 200 and outcome.after_s < 2, outcome
    assert outcome.during_s is None or outcome.during_s < 2, outcome
    assert outcome.memory_growth_mb < MEMORY_SLACK_MB, outcome


def completion_headers(server):
    return {"Host": "127.0.0.1", "Content-Type": "application/json", **server.headers}


@pytest.mark.parametrize("variant", ["no key", "chunked", "chunked, Content-Length lies", "Content-Length 1 GB"])
def test_serving_bodies_are_bounded_by_the_bytes_that_arrive(serving, variant):
    headers = completion_headers(serving)
    if variant == "no key":
        headers.pop("Authorization")
    options = {"no key": dict(chunked=True), "chunked": dict(chunked=True),
               "chunked, Content-Length lies": dict(chunked=True, content_length=2),
               "Content-Length 1 GB": dict(chunked=False, content_length=GB)}[variant]
    outcome = run_attack(variant, serving, lambda: body_attack(serving.port, "/v1/completions", headers, GB, **options),
                         legit_completion(serving))
    expected = {"no key": {401}, "Content-Length 1 GB": {413}}.get(variant, {413, 400})
    assert outcome.detail["status"] in expected | {None}, outcome  # None: closed before the answer could be read
    assert outcome.detail["sent_bytes"] <= (1 << 20) + SOCKET_BUFFERS, outcome
    assert_unharmed(outcome)


def test_labeling_bodies_are_bounded_without_signing_in(labeling):
    headers = {"Host": "127.0.0.1", "Content-Type": "application/json"}
    outcome = run_attack("chunked", labeling, lambda: body_attack(labeling.port, "/api/judgements", headers, GB, chunked=True,
                                                                 content_length=2), legit_labeling(labeling))
    assert outcome.detail["status"] in (401, None) and outcome.detail["sent_bytes"] <= SOCKET_BUFFERS  # none of it read
    assert_unharmed(outcome)
    signed_in = {**headers, "Authorization": f"Bearer {labeling.tokens['bob']}"}
    outcome = run_attack("chunked, signed in", labeling, lambda: body_attack(labeling.port, "/api/judgements", signed_in, GB,
                                                                            chunked=True), legit_labeling(labeling))
    assert outcome.detail["status"] in (413, None) and outcome.detail["sent_bytes"] <= (64 << 10) + SOCKET_BUFFERS
    assert_unharmed(outcome)


def test_without_a_key_no_path_reads_a_body(serving):
    headers = {"Host": "127.0.0.1", "Content-Type": "application/json"}
    for path in ("/v1/nothing-here", "/elsewhere", "/health"):
        outcome = run_attack(f"body to {path}", serving, lambda: body_attack(serving.port, path, headers, GB, chunked=True),
                             legit_completion(serving))
        assert outcome.detail["status"] in (400, 401, None) and outcome.detail["sent_bytes"] <= SOCKET_BUFFERS, outcome
    assert httpx.get(serving.url + "/anything").status_code == 401 and httpx.get(serving.url + "/health").status_code == 200


@pytest.mark.parametrize("which", ["serving", "labeling"])
def test_clients_that_never_read_their_answers_are_dropped(which, request):
    server = request.getfixturevalue(which)
    legit = legit_completion(server) if which == "serving" else legit_labeling(server)
    path = "/v1/models" if which == "serving" else "/static/label.js"
    head = request_head("GET", path, {"Host": "127.0.0.1", **getattr(server, "headers", {})})
    # 40 readers that stall with their answers unsent, against a cap of 32: send_timeout (1 s) drops them
    outcome = run_attack("stalled readers", server, lambda: stalled_reader_attack(server.port, 40, head, 3000, wait_s=2.5), legit)
    assert outcome.detail["held"] == 0, outcome  # each refused, dropped or served: none kept waiting for its reader
    assert_unharmed(outcome)


def test_bodies_that_trickle_give_way_to_new_clients(serving):
    headers = completion_headers(serving)
    # 40 bodies at a byte a second, against a cap of 32: a newcomer drops the slowest of them
    outcome = run_attack("slow bodies", serving, lambda: slow_body_attack(serving.port, 40, "/v1/completions", headers, hold_s=4),
                         legit_completion(serving), during_after=3.0)
    assert outcome.detail["refused"] + outcome.detail["dropped"] >= 8, outcome  # over the cap: 503, or made room
    assert_unharmed(outcome)


@pytest.mark.parametrize("which", ["serving", "labeling"])
def test_idle_connections_make_room_and_are_closed(which, request):
    server = request.getfixturevalue(which)
    legit = legit_completion(server) if which == "serving" else legit_labeling(server)
    # 500 silent sockets, against a cap of 32: each newcomer closes the longest-idle one, so a
    # legitimate client still gets in during the attack; the header timeout (1 s) ends the rest
    outcome = run_attack("500 idle connections", server, lambda: idle_attack(server.port, 500, wait_s=3.0), legit,
                         during_after=0.5)
    assert outcome.detail["closed"] == 500, outcome
    assert_unharmed(outcome)


def test_trickled_headers_are_cut_off(serving):
    outcome = run_attack("header trickle", serving, lambda: trickle_attack(serving.port, interval=0.2, give_up_after=10),
                         legit_completion(serving), during_after=0.3)
    assert outcome.detail["closed_after_s"] is not None and outcome.detail["closed_after_s"] < 2.5, outcome
    assert_unharmed(outcome)


@pytest.mark.parametrize("body, message", [
    ({"messages": [{"role": "assistant", "content": "I start"}]}, "refuses these messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": {"nested": ["x"]}}]}, "messages.0.content"),
])
def test_a_malformed_chat_request_is_a_400(serving, body, message):
    outcome = run_attack("bad chat", serving, lambda: json_attack(serving.url, "/v1/chat/completions",
                                                                 dumps({"model": "base", **body}), serving.headers),
                         legit_completion(serving))
    assert outcome.detail["status"] == 400 and message in outcome.detail["message"], outcome
    assert_unharmed(outcome)


@pytest.mark.parametrize("raw", [
    b'{"model": "base", "prompt": "hi \\ud800 there"}',
    b'{"model": "base", "messages": [{"role": "user", "content": "\\udfff"}]}',
    b'{"model": "base", "prompt": "hi", "stop": ["\\ud83d"]}',
    b'{"model": "base", "prompt": "\xff\xfe not UTF-8"}',
])
def test_lone_surrogates_and_bad_utf8_are_a_400(serving, raw):
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    outcome = run_attack("lone surrogate", serving, lambda: json_attack(serving.url, path, raw, serving.headers),
                         legit_completion(serving))
    assert outcome.detail["status"] == 400, outcome
    assert "Unicode" in outcome.detail["message"] or "JSON" in outcome.detail["message"], outcome
    assert_unharmed(outcome)


def test_ten_thousand_tiny_messages_are_refused_quickly(serving):
    body = dumps({"model": "base", "messages": [{"role": "user", "content": "a"}] * 10_000})
    outcome = run_attack("10,000 messages", serving, lambda: json_attack(serving.url, "/v1/chat/completions", body, serving.headers),
                         legit_completion(serving))
    assert outcome.detail["status"] == 400 and "messages" in outcome.detail["message"], outcome
    assert_unharmed(outcome)


def test_a_request_that_breaks_its_batch_does_not_take_its_companions_down(serving):
    """Each fits the sliding window alone; together (rows padded to the longest prompt) they
    would not: the batch fails, each request is retried alone, and both are answered."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(serving.process.args[serving.process.args.index("--model") + 1]))
    long_prompt = "Hello, how are you? " * 40
    while len(tokenizer(long_prompt)["input_ids"]) > SLIDING_WINDOW - 10:
        long_prompt = long_prompt[: len(long_prompt) * 9 // 10]
    requests = [{"model": "base", "prompt": long_prompt, "max_tokens": 8, "temperature": 0},
                {"model": "base", "prompt": "Hi", "max_tokens": 60, "temperature": 0}]
    before = httpx.get(serving.url + "/health").json()

    def attack():
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda b: httpx.post(serving.url + "/v1/completions", json=b, headers=serving.headers,
                                                         timeout=60), requests))
        return f"{[a.status_code for a in answers]}", {"statuses": [a.status_code for a in answers]}

    outcome = run_attack("batch breaker", serving, attack, legit_completion(serving))
    after = httpx.get(serving.url + "/health").json()
    assert outcome.detail["statuses"] == [200, 200], outcome
    assert after["retried_alone"] - before["retried_alone"] == 2 and after["worker_alive"], (before, after)
    assert_unharmed(outcome)


def test_an_adapter_swapped_for_a_symlink_while_loading_is_never_read(serving, adapter_dir):
    """A writer in the allowed directory flips the adapter's weights between the real file
    and a symlink to a secret adapter outside it, as fast as it can, while the admin loads
    it again and again: every load either fails (403) or serves the real adapter."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    good = adapter_dir / "good"
    weights, real = good / "adapter_model.safetensors", adapter_dir / "real-weights"
    shutil.copy(weights, real)
    secret = adapter_dir.parent / "secret" / "adapter_model.safetensors"

    def answer(model):
        return httpx.post(serving.url + "/v1/completions", headers=serving.headers, timeout=30,
                          json={"model": model, "prompt": "Hello there", "max_tokens": 6, "temperature": 0}).json()

    assert httpx.post(serving.url + "/admin/adapters", json={"name": "reference", "path": "good"}, headers=admin).status_code == 201
    expected = answer("reference")["choices"][0]["text"]
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            link = good / ".link"
            link.unlink(missing_ok=True)
            link.symlink_to(secret)
            os.replace(link, weights)  # now a symlink out of the allowed directory
            time.sleep(0.001)
            shutil.copy(real, good / ".file")
            os.replace(good / ".file", weights)  # the real file again

    flipper = threading.Thread(target=flip)
    flipper.start()
    statuses = []
    try:
        for i in range(12):
            loaded = httpx.post(serving.url + "/admin/adapters", json={"name": f"try{i}", "path": "good"}, headers=admin, timeout=60)
            statuses.append(loaded.status_code)
            if loaded.status_code == 201:
                assert answer(f"try{i}")["choices"][0]["text"] == expected
                httpx.delete(serving.url + f"/admin/adapters/try{i}", headers=admin)
            else:
                assert loaded.status_code == 403, loaded.text
    finally:
        stop.set()
        flipper.join()
        shutil.copy(real, weights)
    assert set(statuses) <= {201, 403} and statuses, statuses


def test_a_labeler_cannot_post_for_a_prompt_not_leased_to_them(labeling):
    ann, bob = ({"Authorization": f"Bearer {labeling.tokens[n]}"} for n in ("ann", "bob"))
    held = httpx.get(labeling.url + "/api/next", headers=bob).json()["prompt"]
    ranks = {str(c["id"]): r for r, c in enumerate(sorted(held["completions"], key=lambda c: c["id"]), 1)}

    def attack():
        answers = [httpx.post(labeling.url + "/api/judgements", headers=ann,
                              json={"prompt_id": pid, "submission_id": f"forged-{pid}-x", "ranks": ranks})
                   for pid in (held["id"], 999_999)]
        return f"{[a.status_code for a in answers]}", {"answers": [(a.status_code, a.json()["error"]) for a in answers]}

    outcome = run_attack("unleased prompt", labeling, attack, legit_labeling(labeling))
    (foreign, foreign_text), (unknown, unknown_text) = outcome.detail["answers"]
    assert foreign == unknown == 404
    assert foreign_text.replace(f"prompt {held['id']} ", "prompt N ") == unknown_text.replace("prompt 999999 ", "prompt N ")
    mine = httpx.post(labeling.url + "/api/judgements", headers=bob,
                      json={"prompt_id": held["id"], "submission_id": "bobs-own-1", "ranks": ranks})
    assert mine.status_code == 201 and mine.json()["duration_ms"] >= 0
    assert_unharmed(outcome)


def test_cross_site_sign_in_is_refused(labeling):
    forged = httpx.post(labeling.url + "/login", data={"token": labeling.tokens["ann"]},
                        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    honest = httpx.post(labeling.url + "/login", data={"token": labeling.tokens["ann"]},
                        headers={"Origin": labeling.url, "Sec-Fetch-Site": "same-origin"})
    assert honest.status_code == 303 and "tunelab_label_token" in honest.headers["set-cookie"]


@pytest.mark.parametrize("which", ["serving", "labeling"])
def test_dns_rebinding_hosts_are_refused(which, request):
    server = request.getfixturevalue(which)
    path = "/v1/models" if which == "serving" else "/login"
    headers = getattr(server, "headers", {})
    assert httpx.get(server.url + path, headers={**headers, "Host": "rebind.evil.example"}).status_code == 421
    assert httpx.get(server.url + path, headers={**headers, "Host": f"localhost:{server.port}"}).status_code == 200


def test_health_reports_the_worker_and_the_log_keeps_the_details(serving):
    health = httpx.get(serving.url + "/health").json()
    assert health["status"] == "ok" and health["worker_alive"] and health["queue"] == 0 and health["batches"] > 0
    log = serving.log()
    assert API_KEY not in log and ADMIN_TOKEN not in log


def test_the_command_line_refuses_a_short_admin_token(tmp_path, served_model):
    import subprocess
    import sys

    (tmp_path / "admin").write_text("short\n")
    done = subprocess.run([sys.executable, "-m", "tunelab", "serve", "--model", str(served_model),
                           "--admin-token-file", str(tmp_path / "admin")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "at least 16 characters" in done.stderr
