"""Rankings become pairs; hh-rlhf transcripts split into prompt and answers; bad rows say where."""

import json

import pytest

from tunelab.alignment.preferences import PreferencePair, load_pairs, ranking_to_pairs, write_pairs
from tunelab.data.transcripts import split_transcripts
from tunelab.errors import DataError


def test_a_ranking_gives_every_implied_pair_ties_and_irrelevant_dropped():
    pairs = ranking_to_pairs("p", ["a", "b", "c", "d", "e"], [2, 1, 2, None, 3])
    got = {(p.chosen, p.rejected, p.margin) for p in pairs}
    # b (1) beats a, c (2) and e (3); a and c (tie) each beat e; d is not relevant
    assert got == {("b", "a", 1.0), ("b", "c", 1.0), ("b", "e", 2.0), ("a", "e", 1.0), ("c", "e", 1.0)}
    assert all(p.prompt == "p" for p in pairs)
    assert ranking_to_pairs("p", ["a", "b"], [1, 1]) == []


def test_hh_rlhf_transcripts_split_at_the_last_shared_assistant_turn():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: Sure, how?"
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: No."
    prompt, good, bad = split_transcripts(chosen, rejected, where="x")
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant:"
    assert (good, bad) == (" Sure, how?", " No.")
    # answers that share a first word still split at the turn, not mid-answer
    prompt, good, bad = split_transcripts("\n\nHuman: Q\n\nAssistant: Sure, yes", "\n\nHuman: Q\n\nAssistant: Sure, no", where="x")
    assert (prompt, good, bad) == ("\n\nHuman: Q\n\nAssistant:", " Sure, yes", " Sure, no")


def test_the_shipped_hh_rlhf_pairs_load():
    test = load_pairs("hh-rlhf", "test")
    assert len(test) == 317  # one of the 318 has an empty answer
    assert len(load_pairs("hh-rlhf", "train", limit=10)) == 10
    assert all(p.prompt.endswith("Assistant:") and p.chosen != p.rejected for p in test)


def test_files_of_pairs_rankings_and_transcripts_round_trip(tmp_path):
    source = tmp_path / "mixed.jsonl"
    rows = [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "id": 7},
        {"prompt": "Q2", "completions": ["x", "y"], "ranks": [2, 1]},
        {"chosen": "\n\nHuman: Q3\n\nAssistant: yes", "rejected": "\n\nHuman: Q3\n\nAssistant: no"},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(source)
    assert pairs[0] == PreferencePair("Q1", "good", "bad", None, "7")
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].margin) == ("y", "x", 1.0)
    assert pairs[2].prompt.endswith("Assistant:")
    out = tmp_path / "pairs.jsonl"
    assert write_pairs(pairs, out) == 3
    assert load_pairs(out) == pairs


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "chosen and rejected are the same text"),
    ({"prompt": "Q", "chosen": "  ", "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "score": 3}, r"unknown field\(s\) \['score'\]"),
    ({"prompt": "Q", "completions": ["a"], "ranks": [1, 2]}, "1 completions but 2 ranks"),
    ({"prompt": "Q", "completions": ["a", "b"]}, r"missing \['ranks'\]"),
    ({"chosen": "Human: hi there", "rejected": "Human: bye"}, "share no"),
    ({"prompt": "Q", "chosen": "a"}, r"missing \['rejected'\]"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{message}"):
        load_pairs(path)


def test_transcripts_with_an_empty_answer_are_skipped_and_counted(tmp_path, capsys):
    path = tmp_path / "hh.jsonl"
    rows = [{"chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant: no"},
            {"chosen": "\n\nHuman: Q\n\nAssistant:", "rejected": "\n\nHuman: Q\n\nAssistant: no"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_pairs(path)) == 1
    assert "skipped 1 transcript pair(s) in hh.jsonl whose last answer is empty" in capsys.readouterr().err
