"""GSM8K (Cobbe et al., 2021): answers, and the ways a model can solve a problem — directly,
by chain of thought, by a program (PAL), by ReAct with a calculator, or by writing its
solution with calculator calls (``<<48/2=`` ... the calculator writes ``24>>``) as the
training solutions do."""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from tunelab.agents.calculator import CalculatorError, calculate

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")
CALL = re.compile(r"<<([^=<>]*)=([^<>]*)>>")


def gold_answer(solution: str) -> str:
    """The number after '####' in a GSM8K solution."""
    if "####" not in solution:
        raise ValueError("a GSM8K solution ends in '#### <number>'")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def last_number(text: str | None) -> str | None:
    """The answer a model gave: the first number after its last '####' if it wrote one,
    else the last number in the text; commas and dollar signs dropped."""
    if not text:
        return None
    after = NUMBER.findall(text.rsplit("####", 1)[1]) if "####" in text else []
    found = after[:1] or NUMBER.findall(text)[-1:]
    return found[0].replace(",", "").replace("$", "").rstrip(".") if found else None


def same_number(predicted: str | None, gold: str) -> bool:
    """Exact match of values: '18.00' and '18' match, '18.5' and '18' do not."""
    if predicted is None:
        return False
    try:
        return Fraction(predicted) == Fraction(gold)
    except (ValueError, ZeroDivisionError):
        return False


def without_calls(solution: str) -> str:
    """A solution with its calculator annotations removed (what the model writes when it
    has no tool): '48/2 = <<48/2=24>>24' becomes '48/2 = 24'."""
    return CALL.sub("", solution)


def trace_segments(solution: str) -> list[tuple[str, bool]]:
    """A training solution as (text, written by the model) segments: the model writes
    everything up to and including a call's '=' ('<<48/2='), the calculator writes the
    result and the closing '>>' ('24>>'); the loss is on the model's segments only."""
    segments: list[tuple[str, bool]] = []
    position = 0
    for match in CALL.finditer(solution):
        segments.append((solution[position:match.start(2)], True))
        segments.append((match.group(2) + ">>", False))
        position = match.end()
    segments.append((solution[position:], True))
    return [(text, by_model) for text, by_model in segments if text]


def tool_output_spans(solution: str) -> list[tuple[int, int]]:
    """Character spans of what the calculator writes in a solution (each result and its
    closing '>>'): excluded from the loss when training tool use."""
    return [(match.start(2), match.end()) for match in CALL.finditer(solution)]


def calculator_result(expression: str) -> str:
    """What the calculator writes for a call the model opened: the value, or '?' for an
    expression it cannot compute (the model then goes on without it)."""
    try:
        return calculate(expression)
    except CalculatorError:
        return "?"


def few_shot(rows: Sequence[dict[str, Any]], style: str, instruction: str = "") -> list[dict[str, str]]:
    """Solved examples as chat turns: 'direct' (the number), 'cot' (the solution without
    calculator calls), 'calculator' (the solution with them); each user turn starts with
    ``instruction``, as a fine-tuning recipe's prompts do."""
    turns = []
    for row in rows:
        answer = gold_answer(row["answer"])
        reply = {"direct": f"#### {answer}", "cot": without_calls(row["answer"]),
                 "calculator": row["answer"]}[style]
        turns += [{"role": "user", "content": user_turn(instruction, row["question"])},
                  {"role": "assistant", "content": reply}]
    return turns


def user_turn(instruction: str, question: str) -> str:
    """The user's text: the instruction, a blank line, the problem (PromptTemplate's shape,
    so a recipe trained with this instruction is prompted at evaluation as in training)."""
    return f"{instruction}\n\n{question}" if instruction else question
