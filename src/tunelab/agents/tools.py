"""Tools an agent can call: a name, a description, a JSON schema of the arguments and a
Python function. Arguments are checked against the schema (``jsonschema``) before the
function runs, and every failure comes back as an observation the model can read, never
as an exception that ends the run.

Built in: ``calculator`` (exact arithmetic, no ``eval``), ``python`` (the sandbox),
``search`` (BM25 over a local corpus, with ``bm25s``) and ``finish`` (the final answer).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.agents.calculator import CalculatorError, calculate
from tunelab.agents.sandbox import SandboxLimits, run_python
from tunelab.errors import TunelabError

FINISH = "finish"


@dataclass
class Observation:
    """What a tool call returns to the model; ``error`` names the kind of failure
    ("arguments", "tool", "unknown tool") or is None."""

    text: str
    error: str | None = None
    final: bool = False  # the finish tool: ``text`` is the answer


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of an object
    function: Callable[..., str] = field(repr=False)

    def spec(self) -> dict[str, Any]:
        """The tool in OpenAI's ``tools`` format."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def __call__(self, arguments: dict[str, Any] | str) -> Observation:
        """Run the tool on arguments (a dict, or its JSON text as a model writes it)."""
        try:
            arguments = check_arguments(self, arguments)
        except TunelabError as error:
            return Observation(str(error), "arguments")
        try:
            text = self.function(**arguments)
        except (TunelabError, ValueError, ArithmeticError) as error:
            return Observation(f"error: {error}", "tool")
        return Observation(text, final=self.name == FINISH)


def check_arguments(tool: Tool, arguments: dict[str, Any] | str) -> dict[str, Any]:
    """Arguments parsed (if text) and valid under the tool's schema, or a TunelabError
    that says what is wrong, in words a model (and a person) can act on."""
    import jsonschema

    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise TunelabError(f"the arguments of {tool.name} are not JSON: {error.msg} at character {error.pos}") from None
    try:
        jsonschema.validate(arguments, tool.parameters)
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path)
        raise TunelabError(f"bad arguments for {tool.name}{f' at {where}' if where else ''}: {error.message}") from None
    return arguments


# Every string has a maxLength, so a constrained call always closes within a bounded
# number of tokens.
def _object(properties: dict[str, Any], required: Sequence[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def calculator_tool() -> Tool:
    def run(expression: str) -> str:
        try:
            return calculate(expression)
        except CalculatorError as error:
            raise TunelabError(str(error)) from None

    return Tool("calculator", "Evaluate an arithmetic expression exactly, e.g. '48/2' or '(3 + 4) * 2.5'.",
                _object({"expression": {"type": "string", "maxLength": 200,
                                       "description": "numbers, + - * / // % ** ( ), sqrt"}},
                        ["expression"]), run)


def python_tool(limits: SandboxLimits | None = None) -> Tool:
    def run(code: str) -> str:
        return run_python(code, limits).observation()

    return Tool("python", "Run a Python program in a sandbox (no network, no files of the user, a few seconds); "
                "what it prints is the result.",
                _object({"code": {"type": "string", "maxLength": 4000,
                                 "description": "a complete Python program that prints its answer"}},
                        ["code"]), run)


def search_tool(index: Any, k: int = 3) -> Tool:
    """``index``: a ``tunelab.agents.search.SearchIndex``."""
    def run(query: str) -> str:
        hits = index.search(query, k)
        return "\n".join(f"[{n}] {hit.text}" for n, hit in enumerate(hits, 1)) or "no passage matches"

    return Tool("search", "Search a local collection of passages; returns the best matches.",
                _object({"query": {"type": "string", "maxLength": 300, "description": "what to look for"}}, ["query"]), run)


def finish_tool() -> Tool:
    return Tool(FINISH, "Give the final answer and stop.",
                _object({"answer": {"type": "string", "maxLength": 300, "description": "the final answer"}}, ["answer"]),
                lambda answer: str(answer))


BUILTIN = ("calculator", "python", "search", FINISH)


def make_tools(names: Sequence[str], *, index: Any = None, limits: SandboxLimits | None = None,
               k: int = 3) -> dict[str, Tool]:
    """The named built-in tools (finish always included), by name."""
    unknown = [n for n in names if n not in BUILTIN]
    if unknown:
        raise TunelabError(f"unknown tool {', '.join(map(repr, unknown))}; tools: {', '.join(BUILTIN)}")
    tools: dict[str, Tool] = {}
    for name in dict.fromkeys([*names, FINISH]):
        if name == "calculator":
            tools[name] = calculator_tool()
        elif name == "python":
            tools[name] = python_tool(limits)
        elif name == "search":
            if index is None:
                raise TunelabError("the search tool needs a corpus")
            tools[name] = search_tool(index, k)
        else:
            tools[name] = finish_tool()
    return tools


def call_tool(tools: dict[str, Tool], name: str, arguments: dict[str, Any] | str) -> Observation:
    if name not in tools:
        return Observation(f"unknown tool '{name}'; tools: {', '.join(tools)}", "unknown tool")
    return tools[name](arguments)
