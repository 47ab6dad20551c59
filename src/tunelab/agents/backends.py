"""Where an agent's model runs: a local model (tunelab's generation, adapters included,
JSON steps constrained by llguidance) or any OpenAI-compatible endpoint (``tunelab
serve`` or another server; JSON steps asked for with ``response_format``). Tests drive
the loops with ``ScriptedBackend``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tunelab.errors import TunelabError


class TruncatedReply(TunelabError):
    """A reply generated under a schema that the token limit cut before it was complete."""

    def __init__(self, text: str, tokens: int):
        super().__init__(f"the reply was cut off by the token limit after {tokens} tokens, before its JSON closed")
        self.text = text


class Backend(Protocol):
    def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
                 stop: Sequence[str] = (), max_tokens: int = 256) -> str:
        """The assistant's reply to ``messages``; under ``schema`` (a JSON schema) when given."""


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, bool]:
    """The prompt text, and whether it already holds the special tokens: the model's chat
    template where it has one, else plain "Role: text" lines ending in "Assistant:"."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*lines, "Assistant:"]), False


def complete_many(backend: Any, conversations: list[list[dict[str, str]]], max_tokens: int) -> list[str]:
    """Free replies to many conversations: batched where the backend can (a local model),
    one by one otherwise."""
    if hasattr(backend, "complete_batch"):
        return backend.complete_batch(conversations, max_tokens)
    return [backend.complete(messages, max_tokens=max_tokens) for messages in conversations]


@dataclass
class LocalBackend:
    """A loaded model (``tunelab.models.load_for_inference``), greedy unless told."""

    loaded: Any
    settings: Any = None  # GenerationSettings; max_new_tokens and stop are set per call
    batch_size: int = 8

    def complete_batch(self, conversations: list[list[dict[str, str]]], max_tokens: int) -> list[str]:
        """Free replies, length-sorted batches through tunelab's batched generation."""
        from dataclasses import replace

        from tunelab.generation import GenerationSettings, generate_from_ids

        tokenizer = self.loaded.tokenizer
        prompts = []
        for messages in conversations:
            text, has_special = render_chat(tokenizer, messages)
            prompts.append(tokenizer(text, add_special_tokens=not has_special)["input_ids"])
        settings = replace(self.settings or GenerationSettings(), max_new_tokens=max_tokens, batch_size=self.batch_size)
        return [g.text for g in generate_from_ids(self.loaded.model, tokenizer, prompts, settings, progress=False)]

    def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
                 stop: Sequence[str] = (), max_tokens: int = 256) -> str:
        from dataclasses import replace

        from tunelab.agents.constrained import SchemaConstraint, json_grammar, vocab_size
        from tunelab.generation import GenerationSettings, generate_from_ids

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        text, has_special = render_chat(tokenizer, messages)
        ids = tokenizer(text, add_special_tokens=not has_special)["input_ids"]
        settings = replace(self.settings or GenerationSettings(), max_new_tokens=max_tokens, stop=tuple(stop),
                           batch_size=1)
        constraint = SchemaConstraint(tokenizer, vocab_size(model), json_grammar(schema)) if schema else None
        result = generate_from_ids(model, tokenizer, [ids], settings, progress=False,
                                   constraints=[constraint] if constraint else None)[0]
        if constraint is not None:
            text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
            if not constraint.accepting:
                raise TruncatedReply(text, len(result.token_ids))
            return text
        return result.text


@dataclass
class OpenAIBackend:
    """An OpenAI-compatible chat completions endpoint, e.g. http://127.0.0.1:8000/v1."""

    base_url: str
    model: str = "base"
    api_key: str | None = None
    timeout: float = 120.0

    def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
                 stop: Sequence[str] = (), max_tokens: int = 256) -> str:
        import httpx

        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": 0}
        if stop:
            body["stop"] = list(stop)
        if schema:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "step", "schema": schema, "strict": True}}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = httpx.post(self.base_url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                                  timeout=self.timeout)
        except httpx.HTTPError as error:
            raise TunelabError(f"{self.base_url}: {error}") from None
        if response.status_code != 200:
            raise TunelabError(f"{self.base_url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()["choices"][0]["message"].get("content") or ""


@dataclass
class ScriptedBackend:
    """Replies in order, recording what it was asked: for tests of the loops."""

    replies: list[str]
    calls: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: list[int] = field(default_factory=list)

    def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
                 stop: Sequence[str] = (), max_tokens: int = 256) -> str:
        self.calls.append({"messages": [dict(m) for m in messages], "schema": schema, "stop": list(stop)})
        self.max_tokens.append(max_tokens)
        if not self.replies:
            raise TunelabError("the scripted backend ran out of replies")
        return self.replies.pop(0)
