"""Soft prompts through peft: prompt tuning (Lester et al., 2021) learns N virtual token
embeddings put before the input; prefix tuning (Li & Liang, 2021) learns key/value
prefixes for every attention layer. The base model is untouched."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.training.methods.lora import task_type


@dataclass
class PromptTuningSettings:
    num_virtual_tokens: int = field(default=20, metadata={"help": "Soft prompt length (paper: 20-100; 20 works for most tasks)."})
    init_text: str | None = field(default="Summarize the following conversation.", metadata={"help": "Initialise the soft prompt from this text's token embeddings (repeated to length); empty or null: random."})


@dataclass
class PrefixTuningSettings:
    num_virtual_tokens: int = field(default=20, metadata={"help": "Prefix length per layer (paper: 10-200)."})
    projection: bool = field(default=False, metadata={"help": "Reparametrise the prefix through an MLP, as the paper does for stability."})


def prepare_prompt_tuning(model: Any, settings: PromptTuningSettings, tokenizer: Any) -> Any:
    import torch
    from peft import PromptTuningConfig, get_peft_model

    config = PromptTuningConfig(task_type=task_type(model), num_virtual_tokens=settings.num_virtual_tokens)
    peft_model = get_peft_model(model, config)
    if settings.init_text:
        # Initialised here rather than with peft's TEXT mode, which reloads the tokenizer
        # from a hub id or path (we may have neither: a converted GGUF, a test tokenizer).
        # Seq2seq models get a soft prompt for the encoder and one for the decoder.
        table = peft_model.prompt_encoder["default"].embedding.weight
        ids = tokenizer(settings.init_text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        ids = (ids * (table.shape[0] // len(ids) + 1))[: table.shape[0]]
        embeddings = peft_model.get_input_embeddings()
        with torch.no_grad():
            table.copy_(embeddings(torch.tensor(ids, device=table.device)))
    return peft_model


def prepare_prefix_tuning(model: Any, settings: PrefixTuningSettings, tokenizer: Any) -> Any:
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        task_type=task_type(model), num_virtual_tokens=settings.num_virtual_tokens, prefix_projection=settings.projection,
    )
    return get_peft_model(model, config)


def save(model: Any, folder: Path, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
