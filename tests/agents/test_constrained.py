"""Grammar-constrained decoding: a random tiny model's tool calls are valid JSON under the
tool's schema, on both architectures, greedy and sampled, batched with other prompts."""

import json

import jsonschema
import pytest

from tunelab.agents.constrained import SchemaConstraint, generate_json, json_grammar, tool_call_schema, vocab_size
from tunelab.agents.tools import make_tools
from tunelab.errors import TunelabError
from tunelab.generation import GenerationSettings, generate_from_ids

TOOLS = list(make_tools(["calculator", "python"]).values())
# Every string of these schemas is at most 300 characters, a character at most 4 byte
# tokens: 1,300 new tokens always hold a call, however random the model.
SHORT_TOOLS = list(make_tools(["calculator"]).values())


@pytest.mark.parametrize("sample", [False, True])
def test_random_model_writes_a_valid_tool_call(agent_model, sample):
    model, tokenizer = agent_model.model, agent_model.tokenizer
    schema = tool_call_schema(SHORT_TOOLS)
    prompt = tokenizer("Summary: call a tool", add_special_tokens=True)["input_ids"]
    settings = GenerationSettings(max_new_tokens=1300, do_sample=sample, temperature=1.5, top_k=0, seed=3, batch_size=1)
    text, call = generate_json(model, tokenizer, prompt, schema, settings=settings)
    jsonschema.validate(call, schema)
    assert call["name"] in ("calculator", "finish") and json.loads(text) == call


def test_a_named_tool_and_its_argument_types(agent_model):
    model, tokenizer = agent_model.model, agent_model.tokenizer
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}
    _, value = generate_json(model, tokenizer, tokenizer("Hello")["input_ids"], schema, max_new_tokens=40)
    assert isinstance(value["n"], int) and 0 <= value["n"] <= 99 and isinstance(value["ok"], bool)
    _, call = generate_json(model, tokenizer, tokenizer("Hello")["input_ids"], tool_call_schema(TOOLS, "calculator"),
                            max_new_tokens=1000)
    assert call["name"] == "calculator" and isinstance(call["arguments"]["expression"], str)


def test_constrained_and_free_prompts_share_a_batch(agent_llama_dir):
    from tunelab.models import load_model

    loaded = load_model(str(agent_llama_dir), device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}}, "required": ["a"],
              "additionalProperties": False}
    constraint = SchemaConstraint(tokenizer, vocab_size(model), json_grammar(schema))
    prompts = [tokenizer("Hello there")["input_ids"], tokenizer("Where is the bank?")["input_ids"]]
    free, bound = generate_from_ids(model, tokenizer, prompts, GenerationSettings(max_new_tokens=40, batch_size=2),
                                    progress=False, constraints=[None, constraint])
    assert json.loads(tokenizer.decode(bound.token_ids, skip_special_tokens=True))["a"] is not None
    alone = generate_from_ids(model, tokenizer, prompts[:1], GenerationSettings(max_new_tokens=40), progress=False)[0]
    assert free.token_ids == alone.token_ids  # the other row is untouched


def test_a_cut_off_value_is_an_error_not_a_partial_call(agent_model):
    model, tokenizer = agent_model.model, agent_model.tokenizer
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 50}}, "required": ["a"]}
    with pytest.raises(TunelabError, match="cut off"):
        generate_json(model, tokenizer, tokenizer("Hello")["input_ids"], schema, max_new_tokens=5)


def test_unknown_tool_name():
    with pytest.raises(TunelabError, match="no tool named 'web'; tools: calculator, python, finish"):
        tool_call_schema(TOOLS, "web")


def test_a_step_schema_bounds_its_tokens():
    from tunelab.agents.constrained import worst_case_tokens
    from tunelab.agents.loops import step_schema

    schema = step_schema(SHORT_TOOLS)
    bound = worst_case_tokens(schema)
    longest = {"thought": "\U0001F600" * 200, "tool": "finish", "arguments": {"answer": "\U0001F600" * 300}}
    assert len(json.dumps(longest, separators=(",", ":")).encode()) <= bound  # one token is at least one byte
    assert worst_case_tokens({"type": "string"}) is None and worst_case_tokens({"type": "integer"}) is None
    assert worst_case_tokens(step_schema(TOOLS)) > bound  # the python tool's code is longer
