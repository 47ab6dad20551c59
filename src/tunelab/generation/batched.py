"""Batched generation that spends compute only on rows still generating.

``model.generate`` keeps every row of a batch in the forward pass until the longest one
ends, and a batch in file order pads short prompts up to the longest. On a CPU that
waste is most of the time. Here prompts are sorted by length (longest first, so the
ETA errs long and an out-of-memory shows at once), batched with left padding for
decoder-only models, run with a KV cache, and rows that finish (end of sequence, a stop
string, or the token budget) are dropped from the batch and its cache at once.

Greedy decoding gives the same tokens as one-prompt-at-a-time decoding up to float
near-ties (padding changes the order of float additions); ``bench/generation.py``
counts those. The logits processors for sampling are transformers' own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tunelab.errors import TunelabError
from tunelab.generation.settings import GenerationSettings


@dataclass
class Generation:
    """One completion: its text, the new token ids, and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    *,
    add_special_tokens: bool = True,
    progress: bool = True,
    desc: str = "generating",
) -> list[Generation]:
    """Generate one completion per prompt, returned in the prompts' order.

    ``add_special_tokens=False`` when the prompt text already carries them (a rendered
    chat template does).
    """
    settings = settings or GenerationSettings()
    settings.validate()
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    return generate_from_ids(model, tokenizer, encoded, settings, progress=progress, desc=desc)


def generate_from_ids(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    progress: bool = True,
    desc: str = "generating",
) -> list[Generation]:
    if any(len(ids) == 0 for ids in prompt_ids):
        raise TunelabError("cannot generate from an empty prompt")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    decoder_class = _Seq2SeqDecoder if model.config.is_encoder_decoder else _CausalDecoder
    eos_ids = _eos_ids(model, tokenizer)
    processors = _logits_processors(settings)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[Generation | None] = [None] * len(prompt_ids)
    new_tokens, started = 0, time.perf_counter()
    with torch.inference_mode(), tqdm(total=len(order), desc=desc, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            decoder = decoder_class(
                model, [list(prompt_ids[i]) for i in rows], tokenizer.pad_token_id, device, settings.max_new_tokens
            )
            outputs = _decode(decoder, settings, processors, eos_ids, tokenizer, generator)
            for row, (tokens, reason) in zip(rows, outputs):
                results[row] = Generation(_to_text(tokenizer, tokens, settings.stop), tokens, reason)
                new_tokens += len(tokens)
            bar.update(len(rows))
            bar.set_postfix(tok_per_s=f"{new_tokens / (time.perf_counter() - started):.1f}")
    return results  # type: ignore[return-value]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def _logits_processors(settings: GenerationSettings):
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.do_sample:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
    return processors


def _decode(decoder, settings, processors, eos_ids, tokenizer, generator) -> list[tuple[list[int], str]]:
    """The decoding loop shared by both architectures; ``decoder`` hides the difference."""
    size = decoder.size
    tokens: list[list[int]] = [[] for _ in range(size)]
    reasons = ["length"] * size
    active = list(range(size))  # batch row -> original row in this batch
    logits = decoder.start()
    for step in range(settings.max_new_tokens):
        if len(processors):
            logits = processors(decoder.history(), logits)
        if settings.do_sample:
            chosen = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
        else:
            chosen = logits.argmax(dim=-1)
        keep = []
        for j, token in enumerate(chosen.tolist()):
            row = active[j]
            if token in eos_ids:
                reasons[row] = "stop"
                continue
            tokens[row].append(token)
            if settings.stop and _hit_stop(tokenizer, tokens[row], settings.stop):
                reasons[row] = "stop"
                continue
            keep.append(j)
        if not keep or step == settings.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            # Finished rows leave the batch and the KV cache: no more compute on them.
            index = torch.tensor(keep, device=chosen.device)
            decoder.select(index)
            chosen = chosen.index_select(0, index)
            active = [active[j] for j in keep]
        logits = decoder.step(chosen)
    return list(zip(tokens, reasons))


def _hit_stop(tokenizer: Any, tokens: list[int], stop: Sequence[str]) -> bool:
    # Decode a tail long enough to hold any stop string (a token is >= 1 character).
    tail = tokenizer.decode(tokens[-(max(len(s) for s in stop) + 2) :], skip_special_tokens=True)
    return any(s in tail for s in stop)


def _to_text(tokenizer: Any, tokens: list[int], stop: Sequence[str]) -> str:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    if cut >= 0:
        text = text[:cut]
    return text.strip()


class _PreallocatedLayer(DynamicLayer):
    """A KV-cache layer written in place into a buffer sized for the whole generation.

    transformers' DynamicLayer concatenates on every step, copying the whole cache each
    time: at batch 32 on a CPU that copy was half of the decode time.
    """

    def __init__(self, keys, values, capacity: int) -> None:
        super().__init__()
        self.device = keys.device
        self._keys = keys.new_zeros((*keys.shape[:2], capacity, keys.shape[3]))
        self._values = values.new_zeros((*values.shape[:2], capacity, values.shape[3]))
        self.length = 0
        self.is_initialized = True
        self.update(keys, values)

    def update(self, key_states, value_states, *args, **kwargs):
        new_length = self.length + key_states.shape[-2]
        if new_length > self._keys.shape[2]:  # never expected: sized for the whole run
            grow = lambda t: torch.cat([t, t.new_zeros((*t.shape[:2], new_length, t.shape[3]))], dim=2)  # noqa: E731
            self._keys, self._values = grow(self._keys), grow(self._values)
        self._keys[:, :, self.length : new_length] = key_states
        self._values[:, :, self.length : new_length] = value_states
        self.length = new_length
        self.keys = self._keys[:, :, :new_length]
        self.values = self._values[:, :, :new_length]
        return self.keys, self.values

    def batch_select_indices(self, indices) -> None:
        self._keys = self._keys.index_select(0, indices)
        self._values = self._values.index_select(0, indices)
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]


# Prompts prefilled together: rows of similar length (they are sorted) up to this many
# tokens including padding. Large enough for efficient matrix products, small enough
# that little padding is computed.
PREFILL_TOKENS = 4096


class _CausalDecoder:
    """Left-padded prompts and one batch KV cache; positions count real tokens only.

    Prefill runs in chunks of similar-length prompts (little padding computed), and
    their caches are copied into one preallocated batch cache for decoding.
    """

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, device: Any, max_new_tokens: int) -> None:
        self.model = model
        self.size = len(prompts)
        self.capacity = max(len(p) for p in prompts) + max_new_tokens
        width = max(len(p) for p in prompts)
        self.sequences = torch.full((self.size, width), pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros((self.size, width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            self.sequences[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
            self.mask[row, width - len(prompt) :] = 1
        self.next_position = self.mask.sum(dim=1)
        self.cache = None

    def _chunks(self) -> list[tuple[int, int]]:
        """(start, end) row ranges; rows are sorted longest first."""
        lengths = self.next_position.tolist()
        chunks, start = [], 0
        for row in range(1, self.size + 1):
            if row == self.size or (row - start + 1) * lengths[start] > PREFILL_TOKENS:
                chunks.append((start, row))
                start = row
        return chunks

    def start(self):
        width = self.sequences.shape[1]
        logits, parts = [], []
        for start, end in self._chunks():
            chunk_width = int(self.next_position[start])
            ids = self.sequences[start:end, width - chunk_width :]
            mask = self.mask[start:end, width - chunk_width :]
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            cache = DynamicCache()
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1,
            )
            logits.append(out.logits[:, -1, :].float())
            parts.append([(layer.keys, layer.values) for layer in cache.layers])
        layers = []
        for index in range(len(parts[0])):
            keys = parts[0][index][0].new_zeros((self.size, parts[0][index][0].shape[1], width, parts[0][index][0].shape[3]))
            values = torch.zeros_like(keys)
            for (start, end), part in zip(self._chunks(), parts):
                chunk_keys, chunk_values = part[index]
                keys[start:end, :, width - chunk_keys.shape[2] :] = chunk_keys
                values[start:end, :, width - chunk_values.shape[2] :] = chunk_values
            layers.append(_PreallocatedLayer(keys, values, self.capacity))
        self.cache = DynamicCache()
        self.cache.layers, self.cache.layer_class_to_replicate = layers, None
        return torch.cat(logits)

    def step(self, tokens):
        self.sequences = torch.cat([self.sequences, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.model(
            input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.next_position[:, None],
            cache=self.cache, use_cache=True,
        )
        self.next_position = self.next_position + 1
        return out.logits[:, -1, :].float()

    def select(self, index) -> None:
        self.cache.batch_select_indices(index)
        self.sequences = self.sequences.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)

    def history(self):
        return self.sequences


class _Seq2SeqDecoder:
    """Encoder run once on right-padded inputs; the decoder steps with self- and
    cross-attention caches, both shrunk when rows finish."""

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, device: Any, max_new_tokens: int) -> None:
        self.model = model
        self.size = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((self.size, width), pad_id, dtype=torch.long)
        self.mask = torch.zeros((self.size, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt)
            self.mask[row, : len(prompt)] = 1
        ids, self.mask = ids.to(device), self.mask.to(device)
        self.encoded = model.get_encoder()(input_ids=ids, attention_mask=self.mask).last_hidden_state
        start_id = model.generation_config.decoder_start_token_id
        if start_id is None:
            start_id = model.config.decoder_start_token_id
        self.sequences = torch.full((self.size, 1), start_id, dtype=torch.long, device=device)
        self.cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))

    def _forward(self, decoder_ids):
        out = self.model(
            encoder_outputs=(self.encoded,), attention_mask=self.mask, decoder_input_ids=decoder_ids,
            cache=self.cache, use_cache=True,
        )
        return out.logits[:, -1, :].float()

    def start(self):
        return self._forward(self.sequences)

    def step(self, tokens):
        self.sequences = torch.cat([self.sequences, tokens[:, None]], dim=1)
        return self._forward(tokens[:, None])

    def select(self, index) -> None:
        self.cache.batch_select_indices(index)
        self.encoded = self.encoded.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.sequences = self.sequences.index_select(0, index)

    def history(self):
        return self.sequences
