"""LoRA (Hu et al., 2021) through peft: low-rank updates on chosen Linear layers.

Defaults follow the paper's practice of adapting the attention projections; the
artifact is a peft adapter folder that `peft.PeftModel.from_pretrained` loads.
QLoRA (Dettmers et al., 2023) loads the base in 4-bit with bitsandbytes: CUDA only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import MethodError
from tunelab.models.loading import model_type
from tunelab.training.methods._common import check_targets

DEFAULT_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "t5": ["q", "k", "v", "o"],
}


@dataclass
class LoraSettings:
    r: int = field(default=8, metadata={"help": "Rank of the update matrices (paper: 1-64; 8 is common)."})
    alpha: int = field(default=16, metadata={"help": "Scaling numerator: the update is scaled by alpha / r."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] | None = field(default=None, metadata={"help": "Module names to adapt (default: attention q, k, v, o projections)."})
    quantize_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the frozen base in 4-bit NF4 (needs CUDA and bitsandbytes)."})


def targets(model: Any, settings: LoraSettings) -> list[str]:
    if settings.target_modules:
        return list(settings.target_modules)
    if model_type(model) in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type(model)]
    raise MethodError(f"no default LoRA targets for model type '{model_type(model)}'; set lora.target_modules")


CLASSIFIER_HEADS = ("score", "classifier", "classification_head")  # Llama, BERT-likes, T5


def task_type(model: Any) -> str:
    if type(model).__name__.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM"


def new_heads(model: Any) -> list[str] | None:
    """A classifier's head is new and small: train it fully and save it with the adapter."""
    if task_type(model) != "SEQ_CLS":
        return None
    return [name for name, _ in model.named_children() if name in CLASSIFIER_HEADS]


def prepare(model: Any, settings: LoraSettings, tokenizer: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    if settings.quantize_4bit:
        if not getattr(model, "is_loaded_in_4bit", False):
            # Never train plain LoRA while the user believes the base is 4-bit; the
            # trainer loads the base with load_model(..., quantize_4bit=True).
            raise MethodError("QLoRA (lora.quantize_4bit) needs the base loaded in 4-bit: a CUDA GPU and bitsandbytes")
        from peft import prepare_model_for_kbit_training

        # fp32 layer norms and input grads for training on a quantized base
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    names = targets(model, settings)
    check_targets(model, names)
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=names, task_type=task_type(model), modules_to_save=new_heads(model),
    )
    return get_peft_model(model, config)


def save(model: Any, folder: Path, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def merge(model: Any) -> Any:
    """Fold the adapter into the base weights; returns a plain transformers model."""
    return model.merge_and_unload()
