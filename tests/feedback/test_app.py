"""The labeling app's API and pages, through an in-process client."""

import json

import pytest
from fastapi.testclient import TestClient

from tunelab.feedback.app import COOKIE, SECURE_COOKIE, create_app
from tunelab.feedback.store import LabelStore


@pytest.fixture
def client(db, tokens):
    return TestClient(create_app(db, max_body_bytes=4096))


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def ranking(prompt, ranks=None):
    """Ranks by completion id (not the shuffled display order), the same for every labeler."""
    ids = sorted(c["id"] for c in prompt["completions"])
    return {str(i): r for i, r in zip(ids, ranks or range(1, len(ids) + 1))}


def submit(client, token, prompt, submission_id, ranks=None):
    return client.post("/api/judgements", headers=auth(token),
                       json={"prompt_id": prompt["id"], "submission_id": submission_id, "ranks": ranking(prompt, ranks)})


def test_every_request_needs_a_valid_token(client):
    for path in ("/api/next", "/api/judgements", "/api/progress", "/api/admin/stats"):
        answer = client.get(path)
        assert answer.status_code == 401 and "Bearer" in answer.json()["error"]
        assert client.get(path, headers=auth("wrong")).status_code == 401
    page = client.get("/label", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"


def test_sign_in_sets_a_strict_httponly_cookie(client, tokens):
    bad = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text
    good = client.post("/login", data={"token": tokens["ann"]}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/label"
    cookie = good.headers["set-cookie"]
    assert COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/label")  # the client keeps the cookie
    assert page.status_code == 200 and "Criterion" in page.text and "ann" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_label_flow_and_progress(client, tokens):
    answer = client.get("/api/next", headers=auth(tokens["ann"])).json()
    prompt = answer["prompt"]
    assert answer["criterion"] and len(prompt["completions"]) == 4
    assert answer["progress"] == {"prompts": 3, "judgements": 0, "wanted": 6, "prompts_complete": 0, "mine": 0}
    created = submit(client, tokens["ann"], prompt, "first-submission", [2, 1, 1, None])
    assert created.status_code == 201 and not created.json()["duplicate"]
    retried = submit(client, tokens["ann"], prompt, "first-submission", [2, 1, 1, None])
    assert retried.status_code == 200 and retried.json()["duplicate"]
    mine = client.get("/api/judgements", headers=auth(tokens["ann"])).json()
    assert len(mine) == 1 and mine[0]["ranks"] == ranking(prompt, [2, 1, 1, None])
    assert client.get("/api/progress", headers=auth(tokens["ann"])).json()["mine"] == 1
    # bob sees none of ann's judgements and cannot change them
    assert client.get("/api/judgements", headers=auth(tokens["bob"])).json() == []
    revised = client.put(f"/api/judgements/{prompt['id']}", headers=auth(tokens["bob"]), json={"ranks": ranking(prompt)})
    assert revised.status_code == 404
    huge = client.put(f"/api/judgements/{10**30}", headers=auth(tokens["ann"]), json={"ranks": ranking(prompt)})
    assert huge.status_code == 422
    revised = client.put(f"/api/judgements/{prompt['id']}", headers=auth(tokens["ann"]), json={"ranks": ranking(prompt)})
    assert revised.status_code == 200 and revised.json()["ranks"] == ranking(prompt)
    # the next prompt for ann is another one
    assert client.get("/api/next", headers=auth(tokens["ann"])).json()["prompt"]["id"] != prompt["id"]


def test_completion_order_is_shuffled_per_labeler_and_stable(client, tokens, db):
    store = LabelStore(db)
    stored = [c["id"] for c in store.prompt(1)["completions"]]
    orders = set()
    for name in ("ann", "bob", "cy", "admin"):
        answer = client.get("/api/next", headers=auth(tokens[name])).json()["prompt"]
        again = client.get("/api/next", headers=auth(tokens[name])).json()["prompt"]
        assert answer == again  # the held prompt, in the same order
        assert sorted(c["id"] for c in answer["completions"]) == sorted(c["id"] for c in store.prompt(answer["id"])["completions"])
        if answer["id"] == 1:
            orders.add(tuple(c["id"] for c in answer["completions"]))
    assert orders and (len(orders) > 1 or orders != {tuple(stored)})


def test_html_in_completions_is_shown_as_text(client, tokens):
    client.post("/login", data={"token": tokens["ann"]})
    page = client.get("/label").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page


@pytest.mark.parametrize("body, status, message", [
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {"1": 1}}, 422, "missing"),
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {"1": 1, "2": 2, "3": 3, "4": 9}}, 422, "from 1 to 4"),
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {}, "extra": 1}, 422, "extra"),
    ({"prompt_id": 1, "ranks": {}}, 422, "submission_id"),
    ({"prompt_id": 99, "submission_id": "abcdefgh", "ranks": {}}, 404, "no prompt 99"),
    ({"prompt_id": 1, "submission_id": "short", "ranks": {"1": 1, "2": 2, "3": 3, "4": 4}}, 422, "8-64"),
    # strict ranks: a string, a float or a boolean is not a rank
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {"1": "1", "2": 2, "3": 3, "4": 4}}, 422, "ranks.1"),
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {"1": 1.0, "2": 2, "3": 3, "4": 4}}, 422, "ranks.1"),
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {"1": True, "2": 2, "3": 3, "4": 4}}, 422, "ranks.1"),
    # '01' is not a way of writing completion 1
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {"1": 1, "01": 2, "2": 2, "3": 3, "4": 4}}, 422, "completion ids"),
    ({"prompt_id": 10**30, "submission_id": "abcdefgh", "ranks": {}}, 422, "prompt_id"),
    ({"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {"1": 1, "2": 2, "3": 3, "4": 4}, "duration_ms": 10**30}, 422, "duration_ms"),
])
def test_bad_submissions_get_a_clear_4xx(client, tokens, body, status, message):
    assert client.get("/api/next", headers=auth(tokens["ann"])).json()["prompt"]["id"] == 1  # ann holds prompt 1
    answer = client.post("/api/judgements", headers=auth(tokens["ann"]), json=body)
    assert answer.status_code == status and message in answer.json()["error"]


def test_malformed_oversized_and_non_json_bodies(client, tokens):
    headers = {**auth(tokens["ann"]), "Content-Type": "application/json"}
    answer = client.post("/api/judgements", headers=headers, content=b"{not json")
    assert answer.status_code == 422 and "bad request" in answer.json()["error"]
    answer = client.post("/api/judgements", headers=headers, content=json.dumps({"pad": "x" * 5000}).encode())
    assert answer.status_code == 413
    answer = client.post("/api/judgements", headers={**auth(tokens["ann"]), "Content-Type": "text/plain"}, content=b"{}")
    assert answer.status_code == 415
    def chunks(*parts):  # no Content-Length: the guard counts what arrives
        yield from parts
    answer = client.post("/api/judgements", headers=headers, content=chunks(b"{}"))
    assert answer.status_code == 422 and "prompt_id" in answer.json()["error"]
    answer = client.post("/api/judgements", headers=headers, content=chunks(*[b" " * 1024] * 5))
    assert answer.status_code == 413


def test_admin_sees_progress_and_agreement(client, tokens):
    for name in ("ann", "bob"):
        prompt = client.get("/api/next", headers=auth(tokens[name])).json()["prompt"]
        assert submit(client, tokens[name], prompt, f"sub-{name}-1").status_code == 201
    assert client.get("/api/admin/stats", headers=auth(tokens["ann"])).status_code == 403
    stats = client.get("/api/admin/stats", headers=auth(tokens["admin"])).json()
    assert stats["progress"]["judgements"] == 2
    assert stats["per_prompt"]["1"]["labelers"] == 2 and stats["per_prompt"]["1"]["agreement"] == 1.0
    assert set(stats["per_labeler"]) == {"ann", "bob"}
    client.post("/login", data={"token": tokens["admin"]})
    page = client.get("/admin")
    assert page.status_code == 200 and "Kendall" in page.text and "ann" in page.text


def test_done_page_when_nothing_is_left(client, tokens, db):
    store = LabelStore(db)
    store.set_setting("labels_per_prompt", "1")
    store.close()
    for i in range(3):
        prompt = client.get("/api/next", headers=auth(tokens["ann"])).json()["prompt"]
        assert submit(client, tokens["ann"], prompt, f"sub-done-{i}").status_code == 201
    assert client.get("/api/next", headers=auth(tokens["ann"])).json()["prompt"] is None
    client.post("/login", data={"token": tokens["bob"]})
    assert "Nothing left to label" in client.get("/label").text


def test_sign_in_and_out_refuse_cross_site_posts(client, tokens):
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"}):
        answer = client.post("/login", data={"token": tokens["ann"]}, headers=headers, follow_redirects=False)
        assert answer.status_code == 403 and "set-cookie" not in answer.headers, headers
        assert client.post("/logout", headers=headers, follow_redirects=False).status_code == 403
    # the page's own form (same origin) and scripts (no Origin) are let through
    same = client.post("/login", data={"token": tokens["ann"]}, follow_redirects=False,
                       headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 303
    assert client.post("/logout", follow_redirects=False).status_code == 303
    forged = client.post("/api/judgements", headers={**auth(tokens["ann"]), "Origin": "http://evil.example"},
                         json={"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {}})
    assert forged.status_code == 403


def test_secure_cookie_is_host_prefixed_with_hsts(db, tokens):
    client = TestClient(create_app(db, secure_cookie=True), base_url="https://testserver")
    answer = client.post("/login", data={"token": tokens["ann"]}, follow_redirects=False)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(SECURE_COOKIE + "=") and "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie
    assert answer.headers["strict-transport-security"].startswith("max-age=")
    assert client.get("/label").status_code == 200  # the __Host- cookie signs in
    assert TestClient(create_app(db)).get("/login").headers.get("strict-transport-security") is None


def test_a_labeler_cannot_post_for_a_prompt_not_leased_to_them(client, tokens):
    held = client.get("/api/next", headers=auth(tokens["bob"])).json()["prompt"]
    foreign = submit(client, tokens["ann"], held, "not-mine-1")
    unknown = client.post("/api/judgements", headers=auth(tokens["ann"]),
                          json={"prompt_id": 77, "submission_id": "not-mine-2", "ranks": ranking(held)})
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["error"].replace(f"prompt {held['id']} ", "prompt N ") == \
        unknown.json()["error"].replace("prompt 77 ", "prompt N ")
    assert submit(client, tokens["bob"], held, "mine-0001").status_code == 201


def test_a_foreign_host_header_is_refused(db, tokens):
    answer = TestClient(create_app(db)).get("/login", headers={"Host": "evil.example"})
    assert answer.status_code == 421 and "evil.example" in answer.json()["error"]


def test_an_anonymous_body_is_refused_before_it_is_read(client):
    answer = client.post("/api/judgements", json={"prompt_id": 1, "submission_id": "abcdefgh", "ranks": {}})
    assert answer.status_code == 401 and "Bearer" in answer.json()["error"]
    assert answer.headers["x-content-type-options"] == "nosniff"  # the guard's own answers carry the app's headers
