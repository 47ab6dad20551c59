"""The labeling store: assignment, validation, idempotent submissions, migrations."""

import sqlite3

import pytest

from tunelab.feedback.store import SCHEMA_VERSION, LabelError, LabelStore, MIGRATIONS


def ranks_for(prompt, order=None):
    ids = [c["id"] for c in prompt["completions"]]
    order = order or list(range(1, len(ids) + 1))
    return {str(i): r for i, r in zip(ids, order)}


def test_wal_and_schema_version(db):
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def test_migrates_an_old_database(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    old.execute("INSERT INTO settings VALUES ('labels_per_prompt', '3'), ('criterion', 'c')")
    old.execute("INSERT INTO prompts (text, created_at) VALUES ('p', 0)")
    old.commit()
    old.close()
    store = LabelStore(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "duration_ms" in [r[1] for r in store.db.execute("PRAGMA table_info(judgements)")]
    assert store.count_prompts() == 1  # data kept


def test_refuses_a_newer_database(tmp_path):
    path = tmp_path / "new.sqlite"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LabelError, match="upgrade tunelab"):
        LabelStore(path)
    with pytest.raises(LabelError, match="no labeling database"):
        LabelStore(tmp_path / "missing.sqlite")


def test_each_prompt_gets_n_labelers_never_the_same_twice(db, tokens):
    store = LabelStore(db)
    ann, bob, cy = (store.user_for_token(tokens[n]) for n in ("ann", "bob", "cy"))
    seen = {}
    for user in (ann, bob, cy, ann, bob, cy, ann, bob, cy):
        prompt = store.next_prompt(user)
        if prompt is None:
            continue
        store.submit(user, prompt["id"], ranks_for(prompt), f"sub-{user.name}-{prompt['id']}")
        seen.setdefault(prompt["id"], []).append(user.name)
    # 3 prompts x 2 labels = 6 judgements, no prompt twice by one labeler
    assert sum(len(v) for v in seen.values()) == 6
    assert all(len(v) == 2 and len(set(v)) == 2 for v in seen.values())
    assert all(store.next_prompt(u) is None for u in (ann, bob, cy))


def test_a_lease_holds_the_slot(db, tokens):
    store = LabelStore(db)
    store.set_setting("labels_per_prompt", "1")
    ann, bob = store.user_for_token(tokens["ann"]), store.user_for_token(tokens["bob"])
    first = store.next_prompt(ann)
    assert store.next_prompt(ann)["id"] == first["id"]  # the same until submitted
    assert store.next_prompt(bob)["id"] != first["id"]  # ann holds it


def test_submission_is_idempotent_and_own(db, tokens):
    store = LabelStore(db)
    ann, bob = store.user_for_token(tokens["ann"]), store.user_for_token(tokens["bob"])
    prompt = store.next_prompt(ann)
    first = store.submit(ann, prompt["id"], ranks_for(prompt), "retry-me-123")
    again = store.submit(ann, prompt["id"], ranks_for(prompt), "retry-me-123")
    assert not first["duplicate"] and again["duplicate"]
    assert len(store.judgements()) == 1
    with pytest.raises(LabelError, match="already judged") as caught:
        store.submit(ann, prompt["id"], ranks_for(prompt), "another-id-456")
    assert caught.value.status == 409
    with pytest.raises(LabelError, match="another judgement"):
        store.submit(bob, prompt["id"], ranks_for(prompt), "retry-me-123")
    # ann changes her own judgement; bob has none to change
    changed = store.update(ann, prompt["id"], ranks_for(prompt, [1, 1, 2, None]))
    assert changed["ranks"] == ranks_for(prompt, [1, 1, 2, None])
    with pytest.raises(LabelError, match="no judgement") as caught:
        store.update(bob, prompt["id"], ranks_for(prompt))
    assert caught.value.status == 404


@pytest.mark.parametrize("ranks, message", [
    (lambda ids: {str(ids[0]): 1}, "missing"),
    (lambda ids: {**{str(i): 1 for i in ids}, "999": 2}, "not shown"),
    (lambda ids: {str(i): 5 for i in ids}, "from 1 to 4"),
    (lambda ids: {str(i): 0 for i in ids}, "from 1 to 4"),
    (lambda ids: {str(i): "1" for i in ids}, "whole number"),
    (lambda ids: {str(i): None for i in ids}, "not relevant"),
    (lambda ids: {"abc": 1}, "completion ids"),
])
def test_bad_rankings_are_refused(db, tokens, ranks, message):
    store = LabelStore(db)
    ann = store.user_for_token(tokens["ann"])
    prompt = store.next_prompt(ann)
    with pytest.raises(LabelError, match=message) as caught:
        store.submit(ann, prompt["id"], ranks([c["id"] for c in prompt["completions"]]), "bad-ranking-1")
    assert caught.value.status == 422
    assert store.judgements() == []


def test_empty_completions_are_refused(db):
    store = LabelStore(db)
    with pytest.raises(LabelError, match="empty"):
        store.add_prompt("p", ["fine", "  "])


def test_users_and_tokens(db):
    store = LabelStore(db)
    token = store.add_user("dee")
    assert store.user_for_token(token).name == "dee"
    assert store.user_for_token("wrong") is None and store.user_for_token(None) is None
    assert token not in str(list(store.db.execute("SELECT * FROM users").fetchall()[0]))  # only the hash
    with pytest.raises(LabelError, match="already exists"):
        store.add_user("dee")


def test_a_submission_needs_a_live_lease_and_ids_cannot_be_probed(db, tokens):
    store = LabelStore(db)
    ann, bob = store.user_for_token(tokens["ann"]), store.user_for_token(tokens["bob"])
    held_by_bob = store.next_prompt(bob)
    answers = {}
    for name, prompt_id in (("foreign", held_by_bob["id"]), ("unknown", 999), ("never leased", 3)):
        with pytest.raises(LabelError) as caught:
            store.submit(ann, prompt_id, ranks_for(held_by_bob), f"probe-{prompt_id}-x")
        answers[name] = (caught.value.status, str(caught.value).replace(f"prompt {prompt_id} ", "prompt N "))
    assert len(set(answers.values())) == 1 and answers["unknown"][0] == 404, answers  # the same answer for each
    mine = store.next_prompt(ann)
    store.db.execute("UPDATE leases SET expires_at = 0 WHERE user_id = ?", (ann.id,))  # the lease ran out
    with pytest.raises(LabelError, match="waiting for you"):
        store.submit(ann, mine["id"], ranks_for(mine), "too-late-123")
    assert store.judgements() == []


def test_the_server_measures_the_duration_from_the_lease(db, tokens):
    store = LabelStore(db)
    ann = store.user_for_token(tokens["ann"])
    prompt = store.next_prompt(ann)
    store.db.execute("UPDATE leases SET leased_at = leased_at - 42 WHERE user_id = ?", (ann.id,))
    assert store.next_prompt(ann)["id"] == prompt["id"]  # renewing the lease keeps its start
    stored = store.submit(ann, prompt["id"], ranks_for(prompt), "timed-one-1", duration_ms=1)
    assert 42_000 <= stored["duration_ms"] < 45_000  # the client's 1 ms is ignored


def test_a_full_prompt_is_never_handed_out_again_and_its_stale_leases_go(db, tokens):
    store = LabelStore(db)
    ann, bob = store.user_for_token(tokens["ann"]), store.user_for_token(tokens["bob"])
    first = store.next_prompt(ann)
    assert store.next_prompt(bob)["id"] == first["id"]  # 2 labels per prompt: both hold prompt 1
    store.set_setting("labels_per_prompt", "1")  # the project lowers its target meanwhile
    store.submit(ann, first["id"], ranks_for(first), "fills-it-1")
    assert store.db.execute("SELECT COUNT(*) FROM leases WHERE prompt_id = ?", (first["id"],)).fetchone()[0] == 0
    assert store.next_prompt(bob)["id"] != first["id"]
    with pytest.raises(LabelError, match="waiting for you"):
        store.submit(bob, first["id"], ranks_for(first), "late-for-it-1")


def test_revoke_and_rotate_tokens(db, tokens):
    store = LabelStore(db)
    ann = store.user_for_token(tokens["ann"])
    store.next_prompt(ann)
    store.revoke("ann")
    assert store.user_for_token(tokens["ann"]) is None
    assert [u.revoked for u in store.users() if u.name == "ann"] == [True]
    assert store.db.execute("SELECT COUNT(*) FROM leases WHERE user_id = ?", (ann.id,)).fetchone()[0] == 0
    fresh = store.rotate("ann")
    assert store.user_for_token(fresh).name == "ann" and store.user_for_token(tokens["ann"]) is None
    assert not [u for u in store.users() if u.name == "ann"][0].revoked
    with pytest.raises(LabelError, match="no user named 'zed'.*ann") as caught:
        store.revoke("zed")
    assert caught.value.status == 404


def test_a_version_2_database_keeps_working(tmp_path):
    path = tmp_path / "v2.sqlite"
    old = sqlite3.connect(path)
    old.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + "; PRAGMA user_version = 2;")
    old.execute("INSERT INTO settings VALUES ('labels_per_prompt', '1'), ('criterion', 'c')")
    old.commit()
    old.close()
    store = LabelStore(path)
    token = store.add_user("ann")
    ann = store.user_for_token(token)
    store.add_prompt("p", ["a", "b"])
    prompt = store.next_prompt(ann)
    store.db.execute("UPDATE leases SET leased_at = NULL")  # a lease made before version 3
    assert store.submit(ann, prompt["id"], ranks_for(prompt), "old-lease-1")["duration_ms"] >= 0
