"""The agent loops: a scripted backend drives ReAct through tool calls to a finish, and
PAL through a program; a random tiny model's constrained steps always parse."""

import json

import pytest

from tunelab.agents.backends import LocalBackend, ScriptedBackend, render_chat
from tunelab.agents.loops import extract_program, run_pal, run_react, step_schema
from tunelab.agents.sandbox import SandboxLimits
from tunelab.agents.tools import make_tools


def step(thought, tool, **arguments):
    return json.dumps({"thought": thought, "tool": tool, "arguments": arguments})


def test_react_calls_tools_then_finishes():
    backend = ScriptedBackend([step("half of 48", "calculator", expression="48/2"),
                               step("add 3", "calculator", expression="24+3"),
                               step("done", "finish", answer="27")])
    result = run_react("What is 48/2 + 3?", make_tools(["calculator"]), backend)
    assert result.answer == "27" and result.stop_reason == "finish" and result.tool_calls == 2
    assert [s.observation for s in result.steps] == ["24", "27", "27"]
    last = backend.calls[-1]["messages"]  # the trace went back to the model
    assert last[-1] == {"role": "user", "content": "Observation: 27"} and last[-2]["role"] == "assistant"
    assert backend.calls[0]["schema"] == step_schema(list(make_tools(["calculator"]).values()))
    json.dumps(result.to_json())


def test_react_reports_bad_steps_and_stops_at_the_limit():
    backend = ScriptedBackend(["not json", step("x", "calculator", expr="1"), step("y", "web", q="a"),
                               step("z", "calculator", expression="1/0")])
    result = run_react("?", make_tools(["calculator"]), backend, max_steps=4, constrained=False)
    assert result.stop_reason == "step limit" and result.answer is None
    assert [s.error for s in result.steps] == ["parse", "arguments", "unknown tool", "tool"]
    assert result.parse_failures == 1 and backend.calls[0]["schema"] is None
    assert "not a step" in backend.calls[1]["messages"][-1]["content"]


def test_pal_runs_the_program():
    backend = ScriptedBackend(["Here:\n```python\nprint(48 // 2 + 3)\n```"])
    result = run_pal("What is 48/2 + 3?", backend, limits=SandboxLimits(wall_seconds=5))
    assert result.answer == "27" and result.stop_reason == "finish" and result.steps[0].arguments["code"] == "print(48 // 2 + 3)"
    failed = run_pal("?", ScriptedBackend(["```python\nraise SystemExit(3)\n```"]))
    assert failed.stop_reason == "program error" and failed.answer is None
    assert run_pal("?", ScriptedBackend([""])).stop_reason == "no program"
    assert extract_program("x = 1\nprint(x)") == "x = 1\nprint(x)"
    assert extract_program("```Python3\nprint(2)\n```") == "print(2)"


def test_a_step_cut_by_the_token_limit_is_an_error(agent_model):
    from tunelab.agents.tools import Tool

    # a user's tool whose string has no maxLength: no bound, so max_tokens applies and can cut
    echo = Tool("echo", "Repeats the text.", {"type": "object", "properties": {"text": {"type": "string"}},
                                             "required": ["text"], "additionalProperties": False}, lambda text: text)
    result = run_react("What is 2 + 2?", {"echo": echo}, LocalBackend(agent_model), max_steps=3, max_tokens=5)
    assert result.stop_reason == "length" and result.steps[-1].error == "length" and result.parse_failures == 0


def test_built_in_tools_get_the_tokens_their_steps_can_take():
    from tunelab.agents.constrained import worst_case_tokens

    backend = ScriptedBackend([step("done", "finish", answer="4")])
    run_react("What is 2 + 2?", make_tools(["calculator"]), backend, max_tokens=5)
    assert backend.max_tokens == [worst_case_tokens(step_schema(list(make_tools(["calculator"]).values())))]


def test_a_random_model_always_writes_valid_steps(agent_model):
    tools = make_tools(["calculator"])
    result = run_react("What is 2 + 2?", tools, LocalBackend(agent_model), max_steps=2, max_tokens=2600)
    assert result.parse_failures == 0 and len(result.steps) >= 1
    assert all(s.tool in tools and s.error in (None, "tool") for s in result.steps)


def test_chat_rendering_without_a_template(agent_t5_dir):
    from transformers import AutoTokenizer

    text, special = render_chat(AutoTokenizer.from_pretrained(agent_t5_dir), [{"role": "user", "content": "hi"}])
    assert text == "User: hi\n\nAssistant:" and not special
