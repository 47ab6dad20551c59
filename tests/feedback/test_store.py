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
