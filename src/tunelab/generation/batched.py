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
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
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
from tunelab.generation.constraint import Constraint
from tunelab.generation.settings import GenerationSettings


@dataclass
class Generation:
    """One completion: its text, the new token ids, and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of sequence or a stop string), "length", or "cancelled" (on_token said stop)
    eos_token_id: int | None = None  # the end-of-sequence token that ended it (not in token_ids)


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
    max_new_tokens: Sequence[int] | None = None,
    on_token: Callable[[int, int], bool] | None = None,
    adapter_names: Sequence[str] | None = None,
    constraints: Sequence[Constraint | None] | None = None,
) -> list[Generation]:
    """Generate from token ids. ``max_new_tokens`` gives each prompt its own limit (at most
    ``settings.max_new_tokens``). ``on_token(prompt index, token id)`` is called for every
    new token as it is chosen (streaming); when it returns False that prompt stops at
    once (finish reason "cancelled") and leaves the batch. ``adapter_names``: for a peft
    model holding several LoRA adapters, the adapter of each prompt ("__base__" for none):
    one batch mixes them (peft's mixed-batch forward). ``constraints``: per prompt, a
    ``Constraint`` (e.g. a grammar) that decides which tokens may come next, or None."""
    if any(len(ids) == 0 for ids in prompt_ids):
        raise TunelabError("cannot generate from an empty prompt")
    if adapter_names is not None:
        _check_adapter_names(model, adapter_names, len(prompt_ids))
    longest = max((len(ids) for ids in prompt_ids), default=0) + settings.max_new_tokens
    window = sliding_window(model.config)
    if window is not None and longest > window:
        raise TunelabError(
            f"prompt + new tokens reach {longest} tokens, past this model's sliding attention window of "
            f"{window}; tunelab's batched generation handles sequences within the window only"
        )
    # Padding is masked, so any id serves; EOS is the usual stand-in.
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    decoder_class = _Seq2SeqDecoder if model.config.is_encoder_decoder else _CausalDecoder
    if _is_prompt_learning(model):
        decoder_class = _Seq2SeqPeftDecoder if model.config.is_encoder_decoder else _VirtualPrefixDecoder
    eos_ids = eos_token_ids(model, tokenizer)
    processors = _logits_processors(settings)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[Generation | None] = [None] * len(prompt_ids)
    new_tokens, started = 0, time.perf_counter()
    with torch.inference_mode(), tqdm(total=len(order), desc=desc, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            routing = _RowAdapters(model, [adapter_names[i] for i in rows]) if adapter_names is not None else None
            extra = {"routing": routing} if routing is not None else {}
            limits = [max_new_tokens[i] for i in rows] if max_new_tokens is not None else None
            grammar = [constraints[i] for i in rows] if constraints is not None else None
            callback = (lambda j, token, rows=rows: on_token(rows[j], token)) if on_token is not None else None
            try:  # the decoder's constructor runs the encoder already: the hooks come off whatever happens
                decoder = decoder_class(
                    model, [list(prompt_ids[i]) for i in rows], pad_id, device, settings.max_new_tokens, **extra
                )
                outputs = _decode(decoder, settings, processors, eos_ids, tokenizer, generator, limits, callback,
                                  grammar)
            finally:
                if routing is not None:
                    routing.close()
            for row, (tokens, reason, eos) in zip(rows, outputs):
                results[row] = Generation(_to_text(tokenizer, tokens, settings.stop), tokens, reason, eos)
                new_tokens += len(tokens)
            bar.update(len(rows))
            bar.set_postfix(tok_per_s=f"{new_tokens / (time.perf_counter() - started):.1f}")
    return results  # type: ignore[return-value]


BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


def _lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, LoraLayer | AuxiliaryTrainingWrapper)]


def _check_adapter_names(model: Any, names: Sequence[str], count: int) -> None:
    if len(names) != count:
        raise TunelabError(f"adapter_names has {len(names)} names for {count} prompts")
    if _is_prompt_learning(model):
        raise TunelabError("mixed-adapter batches are for LoRA adapters; this model uses a soft prompt")
    known = {BASE_ADAPTER, *getattr(model, "peft_config", {})}
    unknown = sorted(set(names) - known)
    if unknown:
        raise TunelabError(f"no LoRA adapter named {', '.join(unknown)} in this model; it has {', '.join(sorted(known))}")


class _RowAdapters:
    """peft's mixed LoRA batches for tunelab's decoders: each row of every forward pass
    goes through its own adapter. peft injects ``adapter_names`` with hooks for the length
    of one ``forward`` call; these hooks live for the whole generation and follow the rows
    as finished ones leave the batch (or a prefill runs a slice of them)."""

    def __init__(self, model: Any, names: list[str]) -> None:
        self.names = list(names)
        self.current = self.names
        self.handles = [layer.register_forward_pre_hook(self._inject, with_kwargs=True) for layer in _lora_layers(model)]

    def _inject(self, module, args, kwargs):
        return args, {**kwargs, "adapter_names": self.current}

    @contextmanager
    def rows(self, start: int, end: int):
        self.current = self.names[start:end]
        try:
            yield
        finally:
            self.current = self.names

    @property
    def mixed(self) -> bool:
        return len(set(self.names)) > 1

    def select(self, index) -> None:
        self.names = [self.names[i] for i in index.tolist()]
        self.current = self.names

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _rows(routing: _RowAdapters | None, start: int, end: int):
    return routing.rows(start, end) if routing is not None else nullcontext()


def _is_prompt_learning(model: Any) -> bool:
    """peft soft prompts (prompt and prefix tuning) add virtual tokens inside peft's own
    forward: such models decode through _VirtualPrefixDecoder or _Seq2SeqPeftDecoder."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def sliding_window(config: Any) -> int | None:
    """The attention window of sliding-window layers, if the model uses any: the
    [prefix | padding | own] cache layout shifts cache indices, which such masks count."""
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and not any("sliding" in str(t) for t in layer_types):
        return None
    return window


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a sequence: the generation config's and the tokenizer's."""
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


def _decode(decoder, settings, processors, eos_ids, tokenizer, generator, limits=None, on_token=None,
            constraints=None) -> list[tuple[list[int], str, int | None]]:
    """The decoding loop shared by both architectures; ``decoder`` hides the difference.
    ``limits``: per-row new-token limits; ``on_token(row, token)``: see generate_from_ids;
    ``constraints``: per row, a Constraint or None."""
    size = decoder.size
    limits = limits or [settings.max_new_tokens] * size
    tokens: list[list[int]] = [[] for _ in range(size)]
    reasons = ["length"] * size
    ended_by: list[int | None] = [None] * size
    active = list(range(size))  # batch row -> original row in this batch
    logits = decoder.start()
    for step in range(settings.max_new_tokens):
        if constraints is not None:  # before the warpers, so top-k/top-p choose among allowed tokens
            for j, row in enumerate(active):
                if constraints[row] is not None:
                    constraints[row].mask_(logits[j])
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
                reasons[row], ended_by[row] = "stop", token
                continue
            tokens[row].append(token)
            if constraints is not None and constraints[row] is not None:
                constraints[row].consume(token)
                if constraints[row].finished:  # the grammar is complete: nothing may follow
                    reasons[row] = "stop"
                    continue
            if on_token is not None and not on_token(row, token):
                reasons[row] = "cancelled"
                continue
            if settings.stop and _hit_stop(tokenizer, tokens[row], settings.stop):
                reasons[row] = "stop"
                continue
            if len(tokens[row]) >= limits[row]:
                continue  # its own limit: finish reason stays "length"
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
    return list(zip(tokens, reasons, ended_by))


def _hit_stop(tokenizer: Any, tokens: list[int], stop: Sequence[str]) -> bool:
    # Decode a tail long enough to hold any stop string: a byte-level token holds at
    # least one byte, so as many tokens as the string has UTF-8 bytes, plus a margin.
    tail = tokenizer.decode(tokens[-(max(len(s.encode()) for s in stop) + 2) :], skip_special_tokens=True)
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
# A token prefix shared by every prompt of a batch (few-shot examples, a system prompt)
# is prefilled once when at least this long, and its KV cache shared by every row.
MIN_SHARED_PREFIX = 32


def _shared_prefix_length(prompts: list[list[int]]) -> int:
    """Longest common token prefix, leaving each prompt at least one token of its own
    (the last prompt token's logits start decoding)."""
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(limit):
        if any(p[i] != first[i] for p in prompts[1:]):
            return i
    return max(limit, 0)


class _CausalDecoder:
    """One batch KV cache laid out as [shared prefix | left padding | own tokens];
    positions count real tokens only, so padding changes nothing but float order.

    The shared prefix (few-shot examples are the same for every row) is prefilled once.
    The rest is prefilled in chunks of similar-length prompts, so little padding is
    computed, and the chunks' caches are copied into one preallocated batch cache.
    """

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, device: Any, max_new_tokens: int,
                 shared: int | None = None, routing: _RowAdapters | None = None) -> None:
        self.model, self.routing = model, routing
        self.size = len(prompts)
        if shared is None:
            shared = _shared_prefix_length(prompts)
            # rows with different adapters have different keys and values for the same prefix
            shared = shared if shared >= MIN_SHARED_PREFIX and not (routing and routing.mixed) else 0
        self.shared = shared
        self.own_lengths = [len(p) - self.shared for p in prompts]
        width = self.shared + max(self.own_lengths)
        self.capacity = width + max_new_tokens
        self.sequences = torch.full((self.size, width), pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros((self.size, width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            self.sequences[row, : self.shared] = torch.tensor(prompt[: self.shared], device=device)
            self.sequences[row, width - self.own_lengths[row] :] = torch.tensor(prompt[self.shared :], device=device)
            self.mask[row, : self.shared] = 1
            self.mask[row, width - self.own_lengths[row] :] = 1
        self.next_position = self.mask.sum(dim=1)
        # The repetition penalty must not see padding (often the EOS token): pads are
        # shown to it as the row's last prompt token, which it already penalizes once.
        self.last_prompt_token = self.sequences[:, -1].clone()
        self.cache = None

    def _chunks(self) -> list[tuple[int, int]]:
        """(start, end) row ranges; rows are sorted longest first."""
        chunks, start = [], 0
        for row in range(1, self.size + 1):
            if row == self.size or (row - start + 1) * self.own_lengths[start] > PREFILL_TOKENS:
                chunks.append((start, row))
                start = row
        return chunks

    def _prefill_shared(self) -> list[tuple[Any, Any]]:
        if not self.shared:
            return []
        cache = DynamicCache()
        with _rows(self.routing, 0, 1):
            self.model(input_ids=self.sequences[:1, : self.shared], cache=cache, use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _prefill_chunk(self, start: int, end: int, prefix: list[tuple[Any, Any]]):
        width, shared, rows = self.sequences.shape[1], self.shared, end - start
        own = self.own_lengths[start]
        ids = self.sequences[start:end, width - own :]
        mask = torch.cat([self.mask[start:end, :shared], self.mask[start:end, width - own :]], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
        if prefix:
            cache = DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix])
        else:
            cache = DynamicCache()
        with _rows(self.routing, start, end):
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1,
            )
        own_kv = [(layer.keys[:, :, shared:], layer.values[:, :, shared:]) for layer in cache.layers]
        return out.logits[:, -1, :].float(), own_kv

    def start(self):
        width = self.sequences.shape[1]
        prefix = self._prefill_shared()
        chunks = self._chunks()
        logits, parts = zip(*(self._prefill_chunk(start, end, prefix) for start, end in chunks))
        layers = []
        for index, sample in enumerate(parts[0]):
            keys = sample[0].new_zeros((self.size, sample[0].shape[1], width, sample[0].shape[3]))
            values = torch.zeros_like(keys)
            if prefix:
                keys[:, :, : self.shared] = prefix[index][0]
                values[:, :, : self.shared] = prefix[index][1]
            for (start, end), part in zip(chunks, parts):
                own_keys, own_values = part[index]
                keys[start:end, :, width - own_keys.shape[2] :] = own_keys
                values[start:end, :, width - own_values.shape[2] :] = own_values
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
        if self.routing is not None:
            self.routing.select(index)
        self.cache.batch_select_indices(index)
        self.sequences = self.sequences.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)
        self.last_prompt_token = self.last_prompt_token.index_select(0, index)

    def history(self):
        return torch.where(self.mask.bool(), self.sequences, self.last_prompt_token[:, None])


class _Seq2SeqDecoder:
    """Encoder run once on right-padded inputs; the decoder steps with self- and
    cross-attention caches, both shrunk when rows finish."""

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, device: Any, max_new_tokens: int,
                 routing: _RowAdapters | None = None) -> None:
        self.model, self.routing = model, routing
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
        if start_id is None:
            raise TunelabError("this encoder-decoder model's config sets no decoder_start_token_id")
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
        if self.routing is not None:
            self.routing.select(index)
        self.cache.batch_select_indices(index)
        self.encoded = self.encoded.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.sequences = self.sequences.index_select(0, index)

    def history(self):
        return self.sequences


class _VirtualPrefixDecoder(_CausalDecoder):
    """peft prompt tuning, p-tuning and prefix tuning on decoder-only models. The virtual
    tokens are a prefix every row shares: as embeddings (prompt tuning) prefilled once
    through the base model, or as ready keys and values (prefix tuning) put straight
    into the cache. Decoding then runs on the base model with tunelab's cache; peft's
    own generate loses the prefix after the first step with transformers 5."""

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, device: Any, max_new_tokens: int) -> None:
        self.peft_model = model
        config = model.active_peft_config
        self.is_prefix_tuning = str(getattr(config.peft_type, "value", config.peft_type)) == "PREFIX_TUNING"
        virtual = config.num_virtual_tokens
        # placeholders for the virtual positions: a token the row has anyway, so the
        # repetition penalty sees nothing new
        rows = [[p[0]] * virtual + list(p) for p in prompts]
        super().__init__(model.get_base_model(), rows, pad_id, device, max_new_tokens, shared=virtual)

    def _prefill_shared(self) -> list[tuple[Any, Any]]:
        prompt = self.peft_model.get_prompt(batch_size=1)
        if self.is_prefix_tuning:
            return [(layer.keys, layer.values) for layer in prompt.layers]
        cache = DynamicCache()
        dtype = self.model.get_input_embeddings().weight.dtype
        self.model(inputs_embeds=prompt.to(dtype), cache=cache, use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in cache.layers]


class _Seq2SeqPeftDecoder:
    """peft soft prompts on encoder-decoder models: the virtual tokens live inside peft's
    forward (encoder inputs, or every layer's keys for prefix tuning), so each step runs
    that forward over the whole decoded prefix, without a cache: slower, but exactly the
    computation training did."""

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int, device: Any, max_new_tokens: int) -> None:
        self.model = model
        self.size = len(prompts)
        width = max(len(p) for p in prompts)
        self.ids = torch.full((self.size, width), pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros((self.size, width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            self.ids[row, : len(prompt)] = torch.tensor(prompt, device=device)
            self.mask[row, : len(prompt)] = 1
        start_id = model.config.decoder_start_token_id
        self.sequences = torch.full((self.size, 1), start_id if start_id is not None else pad_id, dtype=torch.long, device=device)

    def _forward(self):
        out = self.model(input_ids=self.ids, attention_mask=self.mask, decoder_input_ids=self.sequences)
        return out.logits[:, -1, :].float()

    def start(self):
        return self._forward()

    def step(self, tokens):
        self.sequences = torch.cat([self.sequences, tokens[:, None]], dim=1)
        return self._forward()

    def select(self, index) -> None:
        self.ids, self.mask = self.ids.index_select(0, index), self.mask.index_select(0, index)
        self.sequences = self.sequences.index_select(0, index)

    def history(self):
        return self.sequences
