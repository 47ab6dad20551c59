"""Grammar-constrained decoding with llguidance: at every step only the tokens that keep
the text a valid prefix of the JSON schema's language may be chosen, so a tool call is
valid JSON with the right argument types whatever the model (a random tiny one
included). llguidance computes the next-token mask in Rust in well under a millisecond
per token and has no dependencies; xgrammar, the other maintained choice, needs triton
(about 1 GB) on a CPU machine.

``SchemaConstraint`` implements ``tunelab.generation.constraint.Constraint``, so the
constraint runs inside tunelab's batched generation (KV cache, both architectures,
adapters, sampling) — for the agent loops and for ``tunelab serve``'s tools.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.agents.tools import Tool
from tunelab.errors import TunelabError

# No whitespace between JSON tokens: the model cannot stall in spaces, and calls are short.
JSON_DEFAULTS = {"whitespace_flexible": False}
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def grammar_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a Hugging Face tokenizer (built once per tokenizer: ~1 s for
    a 49k vocabulary). ``vocab_size``: the model's logits width, which may exceed the
    tokenizer's (padding rows)."""
    import llguidance.hf

    cached = _TOKENIZERS.get(tokenizer)
    if cached is None or cached[0] != vocab_size:
        cached = (vocab_size, llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size))
        _TOKENIZERS[tokenizer] = cached
    return cached[1]


def json_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)


class SchemaConstraint:
    """One generated text constrained to a grammar (from ``json_grammar``)."""

    def __init__(self, tokenizer: Any, vocab_size: int, grammar: str):
        import llguidance
        import llguidance.torch

        self._matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer, vocab_size), grammar)
        if self._matcher.is_error():
            raise TunelabError(f"bad grammar: {self._matcher.get_error()}")
        self._bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
        self._fill = llguidance.torch.fill_next_token_bitmask

    def mask_(self, logits: Any) -> None:
        self._fill(self._matcher, self._bitmask, 0)
        # llguidance's own torch kernel takes ~0.4 s a call on a CPU; unpacking the bits
        # with numpy takes ~0.1 ms
        bits = np.unpackbits(self._bitmask[0].numpy().view(np.uint8), bitorder="little")
        allowed = np.zeros(logits.shape[-1], dtype=bool)
        width = min(len(bits), len(allowed))
        allowed[:width] = bits[:width].view(bool)
        logits.masked_fill_(~_as_tensor(allowed, logits.device), float("-inf"))

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise TunelabError(f"the grammar refused token {token}: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()


def _as_tensor(mask: np.ndarray, device: Any) -> Any:
    import torch

    return torch.from_numpy(mask).to(device)


def tool_call_schema(tools: Sequence[Tool], name: str | None = None) -> dict[str, Any]:
    """A call of one of ``tools`` (or of the one named): {"name": ..., "arguments": {...}},
    the arguments under that tool's own schema."""
    chosen = [t for t in tools if name is None or t.name == name]
    if not chosen:
        raise TunelabError(f"no tool named '{name}'; tools: {', '.join(t.name for t in tools)}")
    options = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
    return options[0] if len(options) == 1 else {"anyOf": options}


def vocab_size(model: Any) -> int:
    """The width of the model's logits."""
    return int(model.get_output_embeddings().weight.shape[0])


def generate_json(model: Any, tokenizer: Any, prompt_ids: Sequence[int], schema: dict[str, Any],
                  max_new_tokens: int = 256, settings: Any = None) -> tuple[str, Any]:
    """Generate one JSON value under ``schema`` after the prompt; (text, parsed value).
    A text cut short by ``max_new_tokens`` raises a TunelabError (never a partial value)."""
    from tunelab.generation import GenerationSettings, generate_from_ids

    settings = settings or GenerationSettings(max_new_tokens=max_new_tokens, batch_size=1)
    constraint = SchemaConstraint(tokenizer, vocab_size(model), json_grammar(schema))
    result = generate_from_ids(model, tokenizer, [list(prompt_ids)], settings, progress=False,
                               constraints=[constraint])[0]
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    if not constraint.accepting:
        raise TunelabError(f"the JSON was cut off after {len(result.token_ids)} tokens: {text[:200]!r}")
    return text, json.loads(text)


def worst_case_tokens(schema: dict[str, Any]) -> int | None:
    """The most tokens a JSON text of ``schema`` can take, written without whitespace (as
    ``json_grammar`` allows): every string character counted as a 12-byte escape (a
    surrogate pair, "\\ud83d\\ude00") and every byte as a token; None when the schema does not bound its length
    (a string without maxLength, a number, an array)."""
    if "const" in schema:
        return len(json.dumps(schema["const"]).encode())
    if "anyOf" in schema:
        options = [worst_case_tokens(option) for option in schema["anyOf"]]
        return None if None in options else max(options)
    kind = schema.get("type")
    if kind == "string":
        return None if "maxLength" not in schema else 2 + 12 * int(schema["maxLength"])
    if kind == "boolean":
        return 5
    if kind == "object" and schema.get("additionalProperties") is False:
        parts = [worst_case_tokens(spec) for spec in schema.get("properties", {}).values()]
        if None in parts:
            return None
        keys = sum(len(json.dumps(name).encode()) + 2 for name in schema.get("properties", {}))
        return 2 + keys + sum(parts)
    return None

