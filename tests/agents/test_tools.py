"""Tool specs, argument checking against the JSON schema, and BM25 search."""

import json

import pytest

from tunelab.agents.search import Passage, SearchIndex, boolq_passages, passages_from_file
from tunelab.agents.tools import call_tool, make_tools
from tunelab.errors import DataError, TunelabError

CORPUS = [Passage("p1", "The Eiffel Tower is in Paris, the capital of France."),
          Passage("p2", "Photosynthesis turns light, water and carbon dioxide into sugar."),
          Passage("p3", "The river bank flooded after a week of rain in the town."),
          Passage("p4", "Paris hosted the Olympic Games in 1900, 1924 and 2024.")]


def test_specs_are_openai_functions():
    tools = make_tools(["calculator", "python", "search"], index=SearchIndex(CORPUS))
    assert list(tools) == ["calculator", "python", "search", "finish"]
    spec = tools["calculator"].spec()
    assert spec["type"] == "function" and spec["function"]["name"] == "calculator"
    assert spec["function"]["parameters"]["required"] == ["expression"]
    json.dumps([t.spec() for t in tools.values()])  # serialisable as sent to an API


def test_arguments_are_checked_and_errors_are_observations():
    tools = make_tools(["calculator"])
    assert tools["calculator"]({"expression": "48/2"}).text == "24"
    assert tools["calculator"]('{"expression": "2*(3+4)"}').text == "14"  # JSON text as a model writes it
    for arguments, expected in [({"expr": "1"}, "'expression' is a required property"),
                                ({"expression": 5}, "5 is not of type 'string'"),
                                ({"expression": "1", "x": 1}, "Additional properties"),
                                ('{"expression": ', "not JSON")]:
        observation = tools["calculator"](arguments)
        assert observation.error == "arguments" and expected in observation.text, observation.text
    failed = tools["calculator"]({"expression": "1/0"})
    assert failed.error == "tool" and "division by zero" in failed.text
    assert call_tool(tools, "wolfram", {}).error == "unknown tool"
    final = tools["finish"]({"answer": "24"})
    assert final.final and final.text == "24"


def test_unknown_tools_are_named():
    with pytest.raises(TunelabError, match="unknown tool 'web'; tools: calculator, python, search, finish"):
        make_tools(["web"])
    with pytest.raises(TunelabError, match="needs a corpus"):
        make_tools(["search"])


def test_bm25_finds_the_passage():
    index = SearchIndex(CORPUS)
    hits = index.search("Where is the Eiffel Tower?", k=2)
    assert hits[0].id == "p1" and hits[0].score > 0
    assert [h.id for h in index.search("Olympic games Paris", k=2)] == ["p4", "p1"]
    assert index.search("zebra quantum", k=3) == [] and index.search("the of and", k=3) == []
    observation = make_tools(["search"], index=index, k=1)["search"]({"query": "flooded river"})
    assert observation.text.startswith("[1] The river bank flooded")


def test_corpus_files(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "a", "text": "first passage"}\n{"text": "second passage"}\n')
    assert [p.id for p in passages_from_file(jsonl)] == ["a", f"{jsonl}:2"]
    text = tmp_path / "c.txt"
    text.write_text("one paragraph\nstill one\n\nanother one\n")
    assert [p.text for p in passages_from_file(text)] == ["one paragraph\nstill one", "another one"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a corpus row needs"):
        passages_from_file(bad)
    with pytest.raises(DataError, match="empty"):
        SearchIndex([])


def test_boolq_passages_are_distinct():
    passages = boolq_passages()
    assert len(passages) == len({p.text for p in passages}) > 1000


def test_cli_runs_one_tool(tmp_path, capsys):
    from tunelab.cli import main

    assert main(["agent", "tool", "calculator", "--args", '{"expression": "48/2"}']) == 0
    assert capsys.readouterr().out == "24\n"
    assert main(["agent", "tool", "calculator", "--args", '{"expression": "x"}']) == 1
    assert "the name 'x'" in capsys.readouterr().out
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(p.text for p in CORPUS))
    assert main(["agent", "tool", "search", "--corpus", str(corpus), "--k", "1", "--args", '{"query": "Eiffel"}']) == 0
    assert capsys.readouterr().out.startswith("[1] The Eiffel Tower")
    assert main(["agent", "tool", "python", "--wall-seconds", "1", "--args", '{"code": "while True: pass"}']) == 0
    assert "[stopped: wall time limit]" in capsys.readouterr().out
