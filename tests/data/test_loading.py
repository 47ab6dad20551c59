import csv
import json

import pytest

from tunelab.data import load_examples
from tunelab.errors import DataError


def test_builtin_dialogsum_splits():
    dev = load_examples("dialogsum", "dev")
    test = load_examples("dialogsum", "test")
    assert len(dev) == 500 and len(test) == 400
    assert all(len(e.references) == 1 for e in dev)
    assert all(len(e.references) == 3 for e in test)  # summary1..summary3
    assert test[0].id == "test_0" and test[0].input.startswith("#Person1#")
    assert load_examples("dialogsum", limit=5) == test[:5]  # default split is test
    with pytest.raises(DataError, match="no split 'train'.*dev, test"):
        load_examples("dialogsum", "train")


def test_dialogsum_shaped_file_reads_as_is(dialog_file):
    examples = load_examples(dialog_file)
    assert [e.id for e in examples] == ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert examples[1].references == ("Person2 tells Person1 where the bank is.",)


def test_field_mapping_and_formats(tmp_path):
    rows = [{"text": "great movie", "label": 1}, {"text": "dull plot", "label": 0}]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tsv = tmp_path / "s.tsv"
    with open(tsv, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sentence", "label"])
        writer.writerows([["great movie", "1"], ["dull plot", "0"]])
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, parquet):
        examples = load_examples(path, input_field="text", target_field="label")
        assert [(e.input, e.references) for e in examples] == [("great movie", ("1",)), ("dull plot", ("0",))]
    assert [e.input for e in load_examples(tsv)] == ["great movie", "dull plot"]  # 'sentence' auto-detected


def test_several_target_fields_become_several_references(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("q,a1,a2\nwhat?,this,that\n")
    (example,) = load_examples(path, input_field="q", target_field="a1,a2")
    assert example.references == ("this", "that")


def _write(tmp_path, text, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"dialogue": "hi", "summary": "s"}\n{"dialogue": "x"\n', r"bad.jsonl:2: not valid JSON"),
        ('{"dialogue": "hi", "summary": "s"}\n\n{"summary": "s"}\n', r"bad.jsonl:3: missing input field 'dialogue'"),
        ('{"dialogue": "hi", "summary": "s"}\n{"dialogue": "", "summary": "s"}\n', r"bad.jsonl:2: input field 'dialogue' must be a non-empty string"),
        ('{"dialogue": "hi", "summary": "s"}\n{"dialogue": "yo", "summary": null}\n', r"bad.jsonl:2: field 'summary' must be a non-empty string"),
        ('{"dialogue": "hi", "summary": "s"}\n{"dialogue": "yo"}\n', r"bad.jsonl:2: missing reference field 'summary'"),
        ('[1, 2]\n', r"bad.jsonl:1: expected a JSON object per line"),
        ('{"id": 1, "dialogue": "a", "summary": "s"}\n{"id": 1, "dialogue": "b", "summary": "t"}\n', r"bad.jsonl:2: id '1' already used at .*bad.jsonl:1"),
        ('{"words": "hi"}\n', r"bad.jsonl:1: no input field found among \['words'\]; name it with --input-field"),
        ("\n\n", r"bad.jsonl: no rows"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_examples(_write(tmp_path, text))


def test_bad_csv_row_names_its_first_line(tmp_path):
    path = _write(tmp_path, "dialogue,summary\nhello,hi\n\"multi\nline\",ok\nx,y,z\n", "bad.csv")
    with pytest.raises(DataError, match=r"bad.csv:5: more columns than the header's 2"):
        load_examples(path)
    path = _write(tmp_path, "dialogue,summary\nhello,hi\n\"multi\nline\",\n", "gap.csv")
    with pytest.raises(DataError, match=r"gap.csv:3: field 'summary' must be a non-empty string"):
        load_examples(path)


def test_row_numbers_for_parquet_and_non_utf8(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a", "label": "x"}, {"text": "", "label": "y"}]), parquet)
    with pytest.raises(DataError, match=r"p.parquet: row 2: input field 'text'"):
        load_examples(parquet)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="l.jsonl: not UTF-8 text"):
        load_examples(latin)


def test_pretty_printed_json_object_gets_a_hint(tmp_path):
    path = _write(tmp_path, '{\n  "dialogue": "hi",\n  "summary": "s"\n}\n', "one.json")
    with pytest.raises(DataError, match="one JSON object per line is expected"):
        load_examples(path)


def test_limit_must_be_positive(dialog_file):
    with pytest.raises(DataError, match="limit must be >= 1, got 0"):
        load_examples(dialog_file, limit=0)
    assert len(load_examples(dialog_file, limit=2)) == 2


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown file type '.xml'"):
        load_examples(_write(tmp_path, "<a/>", "d.xml"))
    with pytest.raises(DataError, match="--split applies to built-in datasets"):
        load_examples(_write(tmp_path, '{"text": "a"}\n', "d.jsonl"), split="test")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_examples(_write(tmp_path, "nope", "d.parquet"))


def test_sst2_prefixes_are_4_to_8_words_and_no_held_out_one_is_in_train():
    train, test = load_examples("sst2-prefixes", "train"), load_examples("sst2-prefixes", "test")
    assert (len(train), len(test)) == (2543, 749)
    assert all(4 <= len(e.input.split()) <= 8 and not e.references for e in train + test)
    assert not {e.input.lower() for e in train} & {e.input.lower() for e in test}


def test_redteam_prompts_are_first_human_turns_and_no_held_out_one_is_in_train():
    train, test = load_examples("hh-rlhf-prompts", "train"), load_examples("hh-rlhf-prompts", "test")
    assert (len(train), len(test)) == (1505, 315)
    assert all(e.input.strip() and "Human:" not in e.input and not e.references for e in train + test)
    assert not {e.input.lower() for e in train} & {e.input.lower() for e in test}
