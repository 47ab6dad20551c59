"""Agent loops. ReAct (Yao et al., 2023): reason, act, observe, until the model calls
``finish`` or the step limit; every step is one JSON object — a thought, a tool and its
arguments — generated under the tools' schema, so with a local model it always parses
(with an endpoint it is asked for by ``response_format``, and a step that does not parse
is counted and answered with the error). PAL (Gao et al., 2023): the model writes a
program, the sandbox runs it, what it printed last is the answer. The whole trace is
kept for both."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.agents.backends import Backend, TruncatedReply
from tunelab.agents.sandbox import SandboxLimits, run_python
from tunelab.agents.tools import FINISH, Tool, call_tool, check_arguments
from tunelab.errors import TunelabError

THOUGHT_LENGTH = 200  # characters: a thought is bounded, so a constrained step always closes


@dataclass
class Step:
    raw: str  # what the model wrote
    thought: str = ""
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    observation: str = ""
    error: str | None = None  # "parse", "length", "arguments", "tool", "unknown tool"


@dataclass
class AgentResult:
    question: str
    answer: str | None
    stop_reason: str  # "finish", "step limit", "length", "no program", "program error"
    steps: list[Step] = field(default_factory=list)

    @property
    def tool_calls(self) -> int:
        return sum(1 for s in self.steps if s.tool is not None and s.tool != FINISH)

    @property
    def parse_failures(self) -> int:
        return sum(1 for s in self.steps if s.error == "parse")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tool_calls": self.tool_calls, "parse_failures": self.parse_failures}


def step_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """One ReAct step: a thought, then a call of one of the tools with its own arguments."""
    options = [{"type": "object",
                "properties": {"thought": {"type": "string", "maxLength": THOUGHT_LENGTH},
                               "tool": {"const": t.name}, "arguments": t.parameters},
                "required": ["thought", "tool", "arguments"], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def react_instructions(tools: Sequence[Tool]) -> str:
    lines = ["Solve the task step by step. Each reply is one JSON object: "
             '{"thought": "what to do next and why", "tool": "<tool name>", "arguments": {...}}. '
             "You then get the tool's result as an observation. When you know the answer, call "
             f'"{FINISH}" with it.', "", "Tools:"]
    for tool in tools:
        arguments = ", ".join(f'"{name}": {spec.get("type", "any")}'
                              for name, spec in tool.parameters.get("properties", {}).items())
        lines.append(f"- {tool.name}: {tool.description} Arguments: {{{arguments}}}")
    return "\n".join(lines)


def run_react(question: str, tools: dict[str, Tool], backend: Backend, *, max_steps: int = 6,
              max_tokens: int = 600, constrained: bool = True) -> AgentResult:
    """The ReAct loop: at most ``max_steps`` model replies. A constrained step gets at least
    the tokens its schema can take at worst, so the token limit cannot cut it."""
    from tunelab.agents.constrained import worst_case_tokens

    listed = list(tools.values())
    schema = step_schema(listed) if constrained else None
    bound = worst_case_tokens(schema) if schema else None
    max_tokens = max(max_tokens, bound or 0)
    messages = [{"role": "system", "content": react_instructions(listed)}, {"role": "user", "content": question}]
    result = AgentResult(question, None, "step limit")
    for _ in range(max_steps):
        try:
            raw = backend.complete(messages, schema=schema, max_tokens=max_tokens)
        except TruncatedReply as cut:  # a constrained step the token limit cut: recorded, and the run ends
            result.steps.append(Step(cut.text, error="length", observation=str(cut)))
            result.stop_reason = "length"
            break
        step = parse_step(raw, tools)
        if step.error is None:
            observation = call_tool(tools, step.tool, step.arguments or {})
            step.observation, step.error = observation.text, observation.error
            if observation.final:
                result.answer, result.stop_reason = observation.text, "finish"
        result.steps.append(step)
        if result.stop_reason == "finish":
            break
        messages += [{"role": "assistant", "content": raw}, {"role": "user", "content": f"Observation: {step.observation}"}]
    return result


def parse_step(raw: str, tools: dict[str, Tool]) -> Step:
    """A reply as a step; a reply that is not one becomes a step with error "parse" whose
    observation tells the model what was wrong."""
    step = Step(raw)
    try:
        value = json.loads(raw)
        if not isinstance(value, dict) or not isinstance(value.get("tool"), str):
            raise ValueError('expected {"thought": ..., "tool": ..., "arguments": {...}}')
    except (ValueError, RecursionError) as error:
        step.error, step.observation = "parse", f"error: the reply is not a step: {error}"
        return step
    step.thought, step.tool, step.arguments = str(value.get("thought", "")), value["tool"], value.get("arguments", {})
    if step.tool in tools:
        try:
            step.arguments = check_arguments(tools[step.tool], step.arguments)
        except TunelabError as error:
            step.error, step.observation = "arguments", str(error)
    return step


# --- PAL --------------------------------------------------------------------------------------

PAL_INSTRUCTIONS = ("Write a Python program that computes the answer to the question and prints it "
                    "as its last line. Reply with the program only, in a ```python block.")
PAL_EXAMPLE = ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
               "```python\nmoney = 23\nbagels = 5\nprice = 3\nprint(money - bagels * price)\n```")


def run_pal(question: str, backend: Backend, *, limits: SandboxLimits | None = None,
            max_tokens: int = 400) -> AgentResult:
    """PAL: one program, run in the sandbox; the answer is its last printed line."""
    return run_program(question, backend.complete(pal_messages(question), max_tokens=max_tokens), limits)


def pal_messages(question: str) -> list[dict[str, str]]:
    """The conversation that asks for a program (one solved example, then the question)."""
    return [{"role": "system", "content": PAL_INSTRUCTIONS},
            {"role": "user", "content": PAL_EXAMPLE[0]}, {"role": "assistant", "content": PAL_EXAMPLE[1]},
            {"role": "user", "content": question}]


def run_program(question: str, raw: str, limits: SandboxLimits | None = None) -> AgentResult:
    """The second half of PAL: the program in the model's reply, run in the sandbox."""
    code = extract_program(raw)
    step = Step(raw, tool="python", arguments={"code": code})
    result = AgentResult(question, None, "no program", [step])
    if not code.strip():
        step.error, step.observation = "parse", "no program in the reply"
        return result
    run = run_python(code, limits)
    step.observation = run.observation()
    if not run.ok:
        step.error, result.stop_reason = "tool", "program error"
        return result
    lines = run.stdout.strip().splitlines()
    result.answer, result.stop_reason = (lines[-1].strip() if lines else None), "finish"
    return result


def extract_program(reply: str) -> str:
    """The code of the first fenced block (```python or ```), else the whole reply."""
    match = re.search(r"```[A-Za-z0-9_+-]*[ \t]*\n(.*?)(?:```|$)", reply, re.DOTALL)  # ```python, ```Python3, ```
    return (match.group(1) if match else reply).strip("\n")

