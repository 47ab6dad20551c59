"""Every file tunelab writes is replaced whole or not at all."""

import json

import pytest

from tunelab.files import write_json, write_jsonl, write_text


def rows_then_crash(count):
    for i in range(count):
        yield {"id": i, "text": "é"}
    raise RuntimeError("killed half way")


def test_writers_write_whole_files(tmp_path):
    write_json(tmp_path / "new" / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "new" / "a.json").read_text()) == {"x": [1, 2]}
    assert write_jsonl(tmp_path / "b.jsonl", iter([{"a": 1}, {"a": 2}])) == 2
    assert [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()] == [{"a": 1}, {"a": 2}]
    write_text(tmp_path / "c.md", "| table |\n")
    assert (tmp_path / "c.md").read_text() == "| table |\n"


def test_an_interrupted_writer_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "rows.jsonl"
    write_jsonl(target, [{"id": "old"}])
    with pytest.raises(RuntimeError, match="half way"):
        write_jsonl(target, rows_then_crash(3))
    assert target.read_text() == '{"id": "old"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_preference_pairs_are_written_atomically(tmp_path):
    from tunelab.alignment.preferences import PreferencePair, write_pairs

    target = tmp_path / "pairs.jsonl"
    assert write_pairs([PreferencePair("p", "a", "b")], target) == 1

    def pairs_then_crash():
        yield PreferencePair("q", "c", "d")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pairs(pairs_then_crash(), target)
    assert json.loads(target.read_text()) == {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]
