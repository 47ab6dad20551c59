"""Instruction data for training: prompt -> completion, loss on the completion only.

Prompts are built by the same PromptBuilder as `tunelab prompt`, so a fine-tuned model
is trained on exactly the text it is later evaluated with. Batches group examples of
similar length (shuffled in mega-batches, as transformers' LengthGroupedSampler does)
so little compute goes to padding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tunelab.data import Example
from tunelab.errors import DataError
from tunelab.prompting import PromptBuilder

IGNORE_INDEX = -100  # label value the loss skips (prompt and padding tokens)


def fit_prompt(example: Example, builder: PromptBuilder, tokenizer: Any, room: int) -> list[int] | None:
    """Prompt token ids within ``room`` tokens, shortening the *input text* (its end) when
    needed so the instruction and chat template stay whole; None if nothing fits."""
    text = example.input
    for _ in range(8):
        ids = tokenizer(builder.render(Example(example.id, text, example.references), []),
                        add_special_tokens=builder.adds_special_tokens)["input_ids"]
        if len(ids) <= room:
            return ids
        keep = int(len(text) * max(room - (len(ids) - room) * 0.1, 1) / len(ids) * 0.95)
        if keep < 1:
            return None
        text = text[:keep]
    return None


def tokenize_examples(
    examples: Sequence[Example],
    builder: PromptBuilder,
    tokenizer: Any,
    *,
    is_encoder_decoder: bool,
    max_length: int,
    tool_calls: str = "keep",
) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenize (prompt, first reference) pairs; returns the rows and how many inputs were
    shortened to fit ``max_length``. The input text loses its end, never the instruction
    or the chat template around it; the target is cut only if it alone is too long.
    ``tool_calls`` (calculator calls in the target, GSM8K's '<<48/2=24>>'): "keep" them as
    text, leave the calculator's part out of the loss ("tool"), or "strip" them."""
    rows, truncated = [], 0
    eos = tokenizer.eos_token_id
    for example in examples:
        if not example.references:
            raise DataError(f"example '{example.id}' has no reference: training needs a target text")
        # A plain decoder-only prompt ends with "Summary:"; the answer follows after a
        # space, as in the few-shot blocks. Chat turns and T5 targets start fresh.
        joiner = " " if not (builder.use_chat_template or is_encoder_decoder) else ""
        target_ids, target_labels = target_tokens(tokenizer, joiner, example.references[0], tool_calls)
        target_ids, target_labels = target_ids[: max_length // 2], target_labels[: max_length // 2]
        room = max_length if is_encoder_decoder else max_length - len(target_ids)
        prompt_ids = tokenizer(builder.render(example, []), add_special_tokens=builder.adds_special_tokens)["input_ids"]
        if len(prompt_ids) > room:
            prompt_ids = fit_prompt(example, builder, tokenizer, room)
            if prompt_ids is None:
                raise DataError(f"example '{example.id}': the prompt template alone exceeds max_length={max_length}")
            truncated += 1
        if is_encoder_decoder:
            # a masked label must still be read by the decoder: it gets the real tokens
            rows.append({"input_ids": prompt_ids, "labels": target_labels,
                         **({"decoder_targets": target_ids} if target_labels != target_ids else {})})
        else:
            rows.append({"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_labels})
    return rows, truncated


def target_tokens(tokenizer: Any, joiner: str, target: str, tool_calls: str) -> tuple[list[int], list[int]]:
    """The target's token ids (with EOS) and their labels: the same, except that with
    ``tool_calls="tool"`` every token touching what the calculator writes is IGNORE_INDEX."""
    from tunelab.agents.gsm8k import tool_output_spans, without_calls

    if tool_calls == "strip":
        target = without_calls(target)
    eos = tokenizer.eos_token_id
    if tool_calls != "tool":
        ids = tokenizer(joiner + target, add_special_tokens=False)["input_ids"] + [eos]
        return ids, list(ids)
    encoded = tokenizer(joiner + target, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(start + len(joiner), end + len(joiner)) for start, end in tool_output_spans(target)]
    labels = [IGNORE_INDEX if any(a < end and start < b for start, end in spans) else token
              for token, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"])]
    return encoded["input_ids"] + [eos], labels + [eos]


def completion_row(prompt_ids: list[int], completion_ids: list[int], is_encoder_decoder: bool) -> dict[str, list[int]]:
    """A training row from token ids already made (e.g. a sampled response): the loss
    falls on the completion only."""
    if is_encoder_decoder:
        return {"input_ids": list(prompt_ids), "labels": list(completion_ids)}
    return {"input_ids": list(prompt_ids) + list(completion_ids), "labels": [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)}


def row_length(row: dict[str, list[int]]) -> int:
    return len(row["input_ids"]) + (len(row["labels"]) if len(row["labels"]) != len(row["input_ids"]) else 0)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle, then sort by length inside mega-batches of 50 batches, so batches hold
    similar lengths yet their order stays random. Deterministic in (seed, epoch), which
    is what lets --resume replay the same order."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        group = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def collate(rows: Sequence[dict[str, list[int]]], pad_id: int, is_encoder_decoder: bool, left_pad: bool = False,
            decoder_start: int | None = None) -> dict[str, Any]:
    """Pad a batch; padded label positions are IGNORE_INDEX.

    Encoder-decoder rows whose labels hide some target tokens (tool output) carry
    ``decoder_targets``: the decoder reads those (shifted right after ``decoder_start``),
    not the labels, which the model would otherwise shift in with the hidden ones blanked.

    ``left_pad`` (decoder-only): completions end together at the right edge, so the
    output layer runs on the last few positions only (see losses.positions_to_keep);
    position ids then count real tokens, as in generation.
    """
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    label_width = width if not is_encoder_decoder else max(len(r["labels"]) for r in rows)
    labels = torch.full((len(rows), label_width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        n, m = len(row["input_ids"]), len(row["labels"])
        cols = slice(width - n, width) if left_pad else slice(0, n)
        input_ids[i, cols] = torch.tensor(row["input_ids"])
        attention[i, cols] = 1
        labels[i, slice(label_width - m, label_width) if left_pad else slice(0, m)] = torch.tensor(row["labels"])
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if left_pad:
        batch["position_ids"] = (attention.cumsum(dim=1) - 1).clamp(min=0)
    if is_encoder_decoder and any("decoder_targets" in r for r in rows):
        start = pad_id if decoder_start is None else decoder_start
        decoder_inputs = torch.full((len(rows), label_width), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            targets = row.get("decoder_targets", row["labels"])
            decoder_inputs[i, : len(targets)] = torch.tensor([start, *targets[:-1]])
        batch["decoder_input_ids"] = decoder_inputs
    return batch
