"""OpenAI tool calling and structured output against a running server: the official
client gets tool calls that parse under their schemas from a random tiny model, by every
tool_choice; tool results go back as `tool` messages; response_format holds; bad tools
get 400s."""

import json

import httpx
import jsonschema
import pytest
import torch

from tunelab.models import load_model
from tunelab.serving.adapters import AdapterSet
from tunelab.serving.app import ServerSettings, create_app
from tunelab.web import LiveServer
from tests.conftest import CHAT_TEMPLATE

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"], "additionalProperties": False}}}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def serve(loaded):
    pool = AdapterSet(loaded.model)
    return LiveServer(create_app(loaded, pool, ServerSettings(max_tokens_limit=200)))


@pytest.fixture
def live(agent_llama_dir):
    loaded = load_model(str(agent_llama_dir), device="cpu")
    loaded.tokenizer.chat_template = CHAT_TEMPLATE
    server = serve(loaded)
    yield server
    server.close()


def biased(agent_llama_dir, bias: dict[str, float], new_tokens: tuple[str, ...] = ()):
    """The tiny model with a bias on the output layer for some tokens (a test's way to make
    a random model open a call, or close its strings)."""
    loaded = load_model(str(agent_llama_dir), device="cpu")
    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.chat_template = CHAT_TEMPLATE
    if new_tokens:
        tokenizer.add_tokens(list(new_tokens))
        model.resize_token_embeddings(len(tokenizer))
    head = torch.nn.Linear(model.lm_head.in_features, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        for text, value in bias.items():
            head.bias[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))[0]] = value
    model.lm_head = head
    return loaded


@pytest.fixture
def eager_caller(agent_llama_dir):
    """Opens a tool call first: '<tool_call>' is one token that the bias always prefers
    (the call itself is then constrained, and the grammar never allows that token)."""
    server = serve(biased(agent_llama_dir, {"<tool_call>": 1e4}, new_tokens=("<tool_call>",)))
    yield server
    server.close()


@pytest.fixture
def string_closer(agent_llama_dir):
    """Closes every JSON string at once: a random model's strings otherwise run for
    hundreds of tokens where a schema sets no maxLength (as smolagents' do)."""
    server = serve(biased(agent_llama_dir, {'"': 1e4}))
    yield server
    server.close()


def schema_of(tool):
    return tool["function"]["parameters"]


def test_required_and_named_calls_parse(live):
    from openai import OpenAI

    client = OpenAI(base_url=live.url + "/v1", api_key="unused")
    for choice, names in (("required", {"get_weather", "add"}), ({"type": "function", "function": {"name": "add"}}, {"add"})):
        reply = client.chat.completions.create(model="base", messages=MESSAGES, tools=[WEATHER, ADD], tool_choice=choice,
                                               max_tokens=150, temperature=0)
        choice0 = reply.choices[0]
        assert choice0.finish_reason == "tool_calls" and len(choice0.message.tool_calls) == 1
        call = choice0.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        tool = WEATHER if call.function.name == "get_weather" else ADD
        jsonschema.validate(json.loads(call.function.arguments), schema_of(tool))  # right types, always
        assert reply.usage.completion_tokens > 0


def test_auto_calls_then_answers_with_the_tool_result(eager_caller):
    from openai import OpenAI

    client = OpenAI(base_url=eager_caller.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="base", messages=MESSAGES, tools=[WEATHER], max_tokens=150, temperature=0)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    arguments = json.loads(message.tool_calls[0].function.arguments)
    jsonschema.validate(arguments, schema_of(WEATHER))
    follow_up = [*MESSAGES, message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny, 21 C"}]
    again = client.chat.completions.create(model="base", messages=follow_up, tools=[WEATHER], tool_choice="none",
                                           max_tokens=5, temperature=0)
    assert again.choices[0].message.tool_calls is None and again.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_calls_arrive_in_openai_chunks(eager_caller):
    from openai import OpenAI

    client = OpenAI(base_url=eager_caller.url + "/v1", api_key="unused")
    chunks = list(client.chat.completions.create(model="base", messages=MESSAGES, tools=[WEATHER], max_tokens=150,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [call for c in chunks if c.choices and c.choices[0].delta.tool_calls for call in c.choices[0].delta.tool_calls]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_") and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), schema_of(WEATHER))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_auto_without_a_call_is_plain_text(live):
    reply = httpx.post(live.url + "/v1/chat/completions", json={
        "model": "base", "messages": MESSAGES, "tools": [WEATHER], "max_tokens": 6, "temperature": 0}, timeout=60).json()
    message = reply["choices"][0]["message"]
    if "tool_calls" in message:  # the random model may open a call: then it parses
        jsonschema.validate(json.loads(message["tool_calls"][0]["function"]["arguments"]), schema_of(WEATHER))
    else:
        assert isinstance(message["content"], str) and reply["choices"][0]["finish_reason"] in ("stop", "length")


def test_response_format_json_schema(live):
    from openai import OpenAI

    client = OpenAI(base_url=live.url + "/v1", api_key="unused")
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 10},
                                               "sure": {"type": "boolean"}}, "required": ["answer", "sure"],
              "additionalProperties": False}
    reply = client.chat.completions.create(
        model="base", messages=MESSAGES, max_tokens=150, temperature=0.9, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    obj = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=150, temperature=0,
                                         response_format={"type": "json_object"})
    text = obj.choices[0].message.content  # any object: with no length bound, a random model may not close it
    assert text.startswith("{") and (obj.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict))


def test_bad_tools_are_refused(live):
    url = live.url + "/v1/chat/completions"
    cases = [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
        ({"tools": [WEATHER], "n": 2}, "n: 1"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
          "tool_choice": "required"}, "cannot be used"),
        ({"response_format": {"type": "json_schema"}}, "needs a 'json_schema'"),
        ({"tools": [WEATHER] * 200}, "tools"),
    ]
    for extra, message in cases:
        answer = httpx.post(url, json={"model": "base", "messages": MESSAGES, "max_tokens": 5, **extra}, timeout=60)
        assert answer.status_code == 400, (extra, answer.text)
        assert message in answer.json()["error"]["message"], answer.text
    completions = httpx.post(live.url + "/v1/completions", json={"model": "base", "prompt": "hi", "tools": [WEATHER]})
    assert completions.status_code == 400 and "'tools' is not supported" in completions.json()["error"]["message"]


def test_smolagents_tool_calling_agent(string_closer):
    """smolagents' ToolCallingAgent with its OpenAI-compatible model class, unchanged: every
    reply to a request with tools is a tool call that smolagents parses."""
    from smolagents import OpenAIServerModel, ToolCallingAgent, tool
    from smolagents.memory import ActionStep
    from smolagents.utils import AgentParsingError

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: the city's name
        """
        return f"sunny in {city}"

    exchanges = []

    def record(response):
        response.read()
        exchanges.append((json.loads(response.request.content), response.json()))

    client = httpx.Client(event_hooks={"response": [record]})
    model = OpenAIServerModel(model_id="base", api_base=string_closer.url + "/v1", api_key="unused", max_tokens=120,
                              temperature=0, client_kwargs={"http_client": client})
    agent = ToolCallingAgent(tools=[get_weather], model=model, max_steps=2, verbosity_level=0)
    agent.run("What is the weather in Paris?")
    with_tools = [(sent, got) for sent, got in exchanges if sent.get("tools")]
    assert with_tools and all(sent["tool_choice"] == "required" for sent, _ in with_tools)
    for _, got in with_tools:
        calls = got["choices"][0]["message"]["tool_calls"]
        assert calls and calls[0]["function"]["name"] in ("get_weather", "final_answer")
        json.loads(calls[0]["function"]["arguments"])
    steps = [s for s in agent.memory.steps if isinstance(s, ActionStep)]
    assert not any(isinstance(s.error, AgentParsingError) for s in steps), [s.error for s in steps]


def test_hostile_schemas_over_the_socket(live):
    """Schemas built to hurt the grammar compiler: a 400 or a bounded answer (the client's
    timeout bounds the wait), and the server goes on serving."""
    deep = {"type": "object"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    wide = {"type": "string", "enum": [f"value-{i}" * 4 for i in range(20_000)]}
    pattern = {"type": "string", "pattern": "(a|aa)*" * 50 + "b"}
    for schema in (deep, wide, pattern):
        answer = httpx.post(live.url + "/v1/chat/completions", timeout=120, json={
            "model": "base", "messages": MESSAGES, "max_tokens": 20, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
        assert answer.status_code in (200, 400, 413), answer.text[:300]
    assert httpx.get(live.url + "/health", timeout=10).status_code == 200
    ok = httpx.post(live.url + "/v1/chat/completions", json={"model": "base", "messages": MESSAGES, "max_tokens": 3},
                    timeout=60)
    assert ok.status_code == 200
