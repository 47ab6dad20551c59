"""Log-likelihood of multiple-choice options, the shared context computed once per item.

For a decoder-only model the items' contexts run once, as a left-padded batch, keeping
their key/value cache and the logits of the last position only; the cache is repeated
for each option and the options run after it, with logits only at their own positions.
For an encoder-decoder model the encoder runs once per item and the decoder once per
option. Every option of an item is thus scored in two passes whose cost is the context
once plus the options, instead of (context + option) per option.

Tokens follow lm-evaluation-harness for decoder-only models: the context is tokenized
alone, the continuation is what tokenizing context + option adds after it (so an option
is split as it would be in running text), and trailing spaces of the context move to
the option. An empty context (the unconditional score of acc_mi) is the BOS token, or
EOS where there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunelab.evaluation.scenarios import Item


@dataclass
class Encoded:
    context: list[int]
    options: list[list[int]]


def encode_causal(tokenizer: Any, context: str, options: Sequence[str], max_length: int | None = None) -> Encoded:
    """lm-eval's tokenization: the tokenizer's own special tokens (none again when the text
    already starts with BOS, as a chat template's does)."""
    def tokens(text: str) -> list[int]:
        bos = tokenizer.bos_token
        special = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
        return tokenizer(text, **special)["input_ids"]

    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        encoded = Encoded([prefix], [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options])
    else:
        stripped = context.rstrip()
        moved = context[len(stripped):]
        head = tokens(stripped)
        encoded = Encoded(head, [tokens(stripped + moved + o)[len(head):] for o in options])
    if max_length:  # keep the end of a context too long for the model, as lm-eval does
        room = max_length - max(map(len, encoded.options), default=0)
        encoded.context = encoded.context[-max(room, 1):]
    return encoded


def encode_seq2seq(tokenizer: Any, context: str, options: Sequence[str], max_length: int | None = None) -> Encoded:
    context_ids = tokenizer(context)["input_ids"] or [tokenizer.eos_token_id]  # the encoder needs a token
    if max_length:
        context_ids = context_ids[-max_length:]
    return Encoded(context_ids, [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options])


def score_items(model: Any, tokenizer: Any, items: Sequence[Item], *, batch_size: int = 8,
                unconditional: bool = False,
                progress: Callable[[int], None] | None = None) -> tuple[list[list[float]], int]:
    """Each item's option log-probabilities (summed over the option's tokens), and the
    number of tokens the model read. ``unconditional`` scores the options with an empty
    context instead. Items are batched by option count and context length."""
    import torch

    seq2seq = model.config.is_encoder_decoder
    limit = _max_length(model, tokenizer)
    encoded = [
        encode_seq2seq(tokenizer, "" if unconditional else i.context, i.options, limit) if seq2seq
        else encode_causal(tokenizer, "" if unconditional else i.context, i.options, limit)
        for i in items
    ]
    order = sorted(range(len(items)), key=lambda k: (len(encoded[k].options), -len(encoded[k].context)))
    scores: list[list[float]] = [[] for _ in items]
    tokens = 0
    with torch.inference_mode():
        start = 0
        while start < len(order):
            width = len(encoded[order[start]].options)
            batch = [k for k in order[start:start + batch_size] if len(encoded[k].options) == width]
            run = _seq2seq_batch if seq2seq else _causal_batch
            for k, values in zip(batch, run(model, tokenizer, [encoded[k] for k in batch])):
                scores[k] = values
            tokens += sum(len(encoded[k].context) + sum(map(len, encoded[k].options)) for k in batch)
            start += len(batch)
            if progress:
                progress(len(batch))
    return scores, tokens


def _max_length(model: Any, tokenizer: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _padded(rows: list[list[int]], value: int, *, left: bool = False, width: int | None = None) -> tuple[Any, Any]:
    """Token rows as one tensor padded with ``value`` (on the left: every row ends at the
    right edge), and the mask of real tokens."""
    import torch

    width = width or max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, seq in enumerate(rows):
        if seq:
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[r, span] = torch.tensor(seq, dtype=torch.long)
            mask[r, span] = 1
    return ids, mask


def _causal_batch(model: Any, tokenizer: Any, batch: list[Encoded]) -> list[list[float]]:
    import torch

    device = next(model.parameters()).device
    pad, options = _pad_id(tokenizer), len(batch[0].options)
    ids, mask = _padded([e.context for e in batch], pad, left=True)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), -1).repeat_interleave(options, 0)  # [B*K, V]
    flat = [o for e in batch for o in e.options]
    heads = torch.tensor([o[0] if o else 0 for o in flat], device=device)
    totals = (first.gather(-1, heads[:, None]).squeeze(-1) * torch.tensor([bool(o) for o in flat], device=device)).tolist()
    rest = max(len(o) for o in flat) - 1
    if rest > 0:  # the options' later tokens, read after the cached context
        cache = out.past_key_values
        cache.batch_repeat_interleave(options)
        follow, follow_mask = _padded([o[:-1] for o in flat], pad, width=rest)
        full_mask = torch.cat([mask.repeat_interleave(options, 0), follow_mask], 1)
        follow_positions = positions[:, -1:].repeat_interleave(options, 0) + 1 + torch.arange(rest)
        logits = model(input_ids=follow.to(device), attention_mask=full_mask.to(device),
                       position_ids=follow_positions.to(device), past_key_values=cache, use_cache=True).logits
        targets, real = _padded([o[1:] for o in flat], 0, width=rest)
        picked = torch.log_softmax(logits.float(), -1).gather(-1, targets.to(device)[..., None]).squeeze(-1)
        later = (picked * real.to(device)).sum(1).tolist()
        totals = [t + x for t, x in zip(totals, later)]
    return [totals[b * options:(b + 1) * options] for b in range(len(batch))]


def _seq2seq_batch(model: Any, tokenizer: Any, batch: list[Encoded]) -> list[list[float]]:
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    device = next(model.parameters()).device
    pad, options = _pad_id(tokenizer), len(batch[0].options)
    ids, mask = _padded([e.context for e in batch], pad)
    encoder = model.get_encoder()(input_ids=ids.to(device), attention_mask=mask.to(device))
    hidden = encoder.last_hidden_state.repeat_interleave(options, 0)  # the encoder once per item
    flat = [o for e in batch for o in e.options]
    labels, _ = _padded(flat, -100)
    logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                   attention_mask=mask.repeat_interleave(options, 0).to(device), labels=labels.to(device)).logits
    logprobs = torch.log_softmax(logits.float(), -1)
    picked = logprobs.gather(-1, labels.clamp(min=0).to(device)[..., None]).squeeze(-1)
    totals = [float(picked[r, : len(o)].sum()) for r, o in enumerate(flat)]
    return [totals[b * options:(b + 1) * options] for b in range(len(batch))]
