"""The jobs behind the CLI: prompt a model over a dataset, score predictions, the demo.

Each stage package stays independent; this module is where they meet
(data -> prompting -> model -> generation -> evaluation).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data import BUILTIN_DATASETS, Example, load_examples
from tunelab.generation import GenerationSettings
from tunelab.models import DEFAULT_MODEL, load_for_inference
from tunelab.errors import PromptError
from tunelab.files import write_json, write_jsonl, write_text
from tunelab.prompting import Prompt, PromptBuilder, PromptTemplate, ShotSelector


@dataclass
class PromptJob:
    """Everything `tunelab prompt` needs; each field is a CLI option of the same name."""

    data: str = field(default="dialogsum", metadata={"help": "Built-in dataset (dialogsum) or a .jsonl/.csv/.tsv/.parquet file."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Model name, folder, .gguf file or hub id."})
    adapter: str | None = field(default=None, metadata={"help": "Trained adapter folder to apply (LoRA, prompt/prefix tuning, IA3, selective, bottleneck)."})
    split: str | None = field(default=None, metadata={"help": "Split of a built-in dataset (dialogsum: dev, test; default test)."})
    input_field: str | None = field(default=None, metadata={"help": "Field holding the input text (auto-detected)."})
    target_field: str | None = field(default=None, metadata={"help": "Reference field(s), comma-separated (auto-detected)."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    shots: int | None = field(default=None, metadata={"help": "In-context examples per prompt (0 = zero-shot)."})
    shot_ids: list[str] | None = field(default=None, metadata={"help": "Comma-separated pool ids to use as the examples (fixes the shots)."})
    shot_pool: str | None = field(default=None, metadata={"help": "Where shots come from: a split of the built-in dataset or a file (default: dialogsum's dev split; for a file, the file itself)."})
    shot_seed: int = field(default=0, metadata={"help": "Seed of the draw of shots from the pool."})
    chat_template: str = field(default="auto", metadata={"help": "Apply the model's chat template (auto: if the tokenizer has one).", "choices": ("auto", "on", "off")})
    instruction: str | None = field(default=None, metadata={"help": "Task instruction (default: the course's summarization prompt)."})
    shot_style: str = field(default="inline", metadata={"help": "With a chat template: 'inline' puts examples and question in one user message, 'turns' makes each example a user/assistant exchange.", "choices": ("inline", "turns")})
    output_label: str | None = field(default=None, metadata={"help": "Cue before the answer in plain prompts (default 'Summary:')."})
    on_overflow: str = field(default="error", metadata={"help": "A prompt longer than the context window: stop with an error, or drop shots from the end.", "choices": ("error", "drop-shots")})
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    best_of: int = field(default=1, metadata={"help": "Sample N responses per prompt and answer with the one --reward scores highest (best-of-n; implies sampling)."})
    reward: str | None = field(default=None, metadata={"help": "With --best-of: a reward model or classifier folder (tunelab train output), or module:function."})
    reward_output: str = field(default="logit", metadata={"help": "With --best-of and a classifier: rank by the class's logit, probability or log_probability.", "choices": ("logit", "probability", "log_probability")})
    reward_label: str | None = field(default=None, metadata={"help": "With --best-of and a classifier: the class whose score ranks (default: the one it rewards)."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on a capable GPU, else fp32), float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N, mps."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub to run (off: only transformers' own architectures)."})


def load_shot_pool(job: PromptJob) -> list[Example]:
    """The examples shots are drawn from (never the row being answered: see ShotSelector)."""
    mapping = {"input_field": job.input_field, "target_field": job.target_field}
    builtin = BUILTIN_DATASETS.get(job.data.lower())
    if job.shot_pool is None:
        if builtin:
            return load_examples(job.data, builtin.pool_split)
        return load_examples(job.data, **mapping)
    if builtin and job.shot_pool in builtin.splits:
        return load_examples(job.data, job.shot_pool)
    return load_examples(job.shot_pool, **mapping)


def build_prompts(job: PromptJob, loaded: Any, examples: list[Example]) -> tuple[PromptBuilder, list[Prompt]]:
    wording = {"instruction": job.instruction, "output_label": job.output_label, "shot_style": job.shot_style}
    template = PromptTemplate(**{k: v for k, v in wording.items() if v is not None})
    chat = {"auto": None, "on": True, "off": False}[job.chat_template]
    builder = PromptBuilder(
        loaded.tokenizer,
        template,
        use_chat_template=chat,
        context_window=loaded.context_window,
        is_encoder_decoder=loaded.is_encoder_decoder,
        max_new_tokens=job.generation.max_new_tokens,
        on_overflow=job.on_overflow,
    )
    if job.shot_ids and job.shots == 0:
        raise PromptError("--shots 0 with --shot-ids: give one or the other")
    wants_shots = bool(job.shots or job.shot_ids)  # a negative count reaches ShotSelector's check
    selector = ShotSelector(load_shot_pool(job), job.shots, ids=job.shot_ids, seed=job.shot_seed) if wants_shots else None
    return builder, builder.build_all(examples, selector)


def run_prompt(job: PromptJob, loaded: Any = None, *, progress: bool = True, desc: str = "generating") -> list[dict]:
    """Prompt the model on every example; one output row per example."""
    from tunelab.generation import generate

    check_best_of(job)
    job.generation.validate()  # before minutes of loading, not after
    examples = load_examples(
        job.data, job.split, input_field=job.input_field, target_field=job.target_field, limit=job.limit
    )
    if not any(e.references for e in examples):
        print(
            f"tunelab: warning: {job.data} has no reference field, so the predictions can't be scored; "
            "name it with --target-field",
            file=sys.stderr,
        )
    if loaded is None:
        loaded = load_for_inference(job.model, job.adapter, dtype=job.dtype, device=job.device,
                                    trust_remote_code=job.trust_remote_code)
    reward = _load_ranking_reward(job)  # before generating: a bad --reward fails in seconds, not after minutes
    builder, prompts = build_prompts(job, loaded, examples)
    n = job.best_of
    outputs = generate(
        loaded.model,
        loaded.tokenizer,
        [p.text for p in prompts for _ in range(n)],
        job.generation,
        add_special_tokens=builder.adds_special_tokens,
        progress=progress,
        desc=desc if n == 1 else f"{desc} (best of {n})",
    )
    best, scores = _best_of_n(reward, n, [p.text for p in prompts], [o.text for o in outputs])
    rows = []
    for i, p in enumerate(prompts):
        out = outputs[i * n + best[i]]
        row = {
            "id": p.example.id,
            "prompt": p.text,
            "prediction": out.text,
            "references": list(p.example.references),
            "shot_ids": p.shot_ids,
            "finish_reason": out.finish_reason,
            "new_tokens": len(out.token_ids),
        }
        if n > 1:
            row.update(best_of=n, score=scores[i * n + best[i]],
                       candidates=[{"text": o.text, "score": s} for o, s in zip(outputs[i * n : (i + 1) * n], scores[i * n : (i + 1) * n])])
        rows.append(row)
    return rows


def check_best_of(job: PromptJob) -> None:
    """--best-of's options agree before any model is loaded; it samples (says so if asked not to)."""
    if job.best_of < 1:
        raise PromptError(f"--best-of must be >= 1, got {job.best_of}")
    if job.best_of > 1 and not job.reward:
        raise PromptError("--best-of N needs --reward: a reward model or classifier folder, or module:function")
    if job.best_of == 1 and job.reward:
        raise PromptError("--reward ranks samples: give --best-of N (N >= 2) with it")
    if job.best_of > 1 and not job.generation.do_sample:
        print(f"tunelab prompt: --best-of {job.best_of} samples its candidates (as with --do-sample)", file=sys.stderr)
        job.generation.do_sample = True


def _load_ranking_reward(job: PromptJob) -> Any:
    if job.best_of == 1:
        return None
    from tunelab.alignment.reward import load_reward

    return load_reward(job.reward, output=job.reward_output, label=job.reward_label)


def _best_of_n(reward: Any, n: int, prompts: list[str], texts: list[str]) -> tuple[list[int], list[float]]:
    if n == 1:
        return [0] * len(prompts), []
    from tunelab.alignment.best_of_n import choose

    return choose(prompts, texts, n, reward)


def human_baseline(examples: Iterable[Example]) -> list[dict]:
    """The first human reference as the prediction, scored against the others: how well
    people agree with each other, the ceiling a model is compared with."""
    rows = []
    for example in examples:
        if len(example.references) < 2:
            raise ValueError(f"example '{example.id}' has fewer than 2 references: no human baseline")
        rows.append({
            "id": example.id,
            "prompt": "",
            "prediction": example.references[0],
            "references": list(example.references[1:]),
        })
    return rows


@dataclass
class DemoJob:
    """`tunelab demo`: zero-, one- and few-shot DialogSum summaries with the default model."""

    limit: int = field(default=40, metadata={"help": "DialogSum test dialogues to summarize."})
    shots: tuple[int, ...] = field(default=(0, 1, 3), metadata={"help": "Shot counts to compare."})
    out_dir: Path = field(default=Path("runs/demo"), metadata={"help": "Where predictions and metrics go."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Model to prompt."})
    max_new_tokens: int = field(default=60, metadata={"help": "Summary length cap (the course's protocol: 60)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per batch."})
    train_steps: int = field(default=20, metadata={"help": "Steps of the short LoRA fine-tune (0 = skip it)."})
    recipe: Path = field(default=Path("recipes/dialogsum-lora.yaml"), metadata={"help": "Recipe of the short fine-tune."})
    classifier_steps: int = field(default=20, metadata={"help": "Steps of the short toxicity-classifier training (0 = skip alignment)."})
    ppo_steps: int = field(default=3, metadata={"help": "PPO steps detoxifying the LoRA summarizer (0 = skip alignment)."})


def _demo_lora(job: DemoJob, settings: GenerationSettings) -> tuple[Path, Path]:
    """A short LoRA fine-tune on DialogSum dev, then the same test dialogues, zero-shot."""
    from tunelab.recipe import load_recipe, train

    lora_dir = job.out_dir / "lora"
    config = load_recipe(job.recipe, [f"max_steps={job.train_steps}", f"output_dir={lora_dir}", "eval_data=null",
                                      f"model={job.model}", "save_steps=0"])
    print(f"tunelab demo: LoRA fine-tune, {job.train_steps} steps of {config.batch_size} DialogSum dev dialogues", file=sys.stderr)
    result = train(config)
    prompt_job = PromptJob(data="dialogsum", split="test", limit=job.limit, model=job.model,
                           adapter=str(result.artifact), generation=settings)
    path = job.out_dir / f"lora-{job.train_steps}-steps.jsonl"
    write_jsonl(path, run_prompt(prompt_job, desc="LoRA"))
    return path, result.artifact


def _demo_alignment(job: DemoJob, summarizer: Path) -> None:
    """A toxicity classifier trained briefly, then a few PPO steps on the summarizer with
    its 'neither' logit as the reward: reward and KL printed per step."""
    import json

    from tunelab.recipe import load_recipe, train

    classifier_dir = job.out_dir / "toxicity-classifier"
    config = load_recipe(Path("recipes/toxicity-classifier.yaml"), [
        f"max_steps={job.classifier_steps}", f"limit={job.classifier_steps * 32}", "eval_limit=200",
        f"output_dir={classifier_dir}", f"model={job.model}", "save_steps=0"])
    print(f"tunelab demo: toxicity classifier, {job.classifier_steps} steps of 32 tweets", file=sys.stderr)
    classifier = train(config)
    print(f"tunelab demo: classifier held-out accuracy {classifier.summary['eval_accuracy']:.3f}, "
          f"macro-F1 {classifier.summary['eval_macro_f1']:.3f}", file=sys.stderr)
    ppo_dir = job.out_dir / "detox-ppo"
    config = load_recipe(Path("recipes/dialogsum-detox-ppo.yaml"), [
        f"max_steps={job.ppo_steps}", f"ppo.init_adapter={summarizer}", f"ppo.reward={classifier.artifact}",
        "ppo.rollout_batch_size=8", "ppo.ppo_epochs=1", "eval_data=null", f"output_dir={ppo_dir}", f"model={job.model}", "save_steps=0"])
    print(f"tunelab demo: PPO, {job.ppo_steps} steps of 8 rollouts, reward = the classifier's 'neither' logit", file=sys.stderr)
    train(config)
    print("\n| PPO step | reward | KL | entropy | response tokens | seconds (generate / score / update) |\n|---:|---:|---:|---:|---:|---|")
    for line in (ppo_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        print(f"| {row['step']} | {row['reward']:.3f} | {row['kl']:.3f} | {row['entropy']:.2f} | {row['response_length']:.1f} | "
              f"{row['generation_seconds']:.0f} / {row['scoring_seconds']:.0f} / {row['update_seconds']:.0f} |")


def run_demo(job: DemoJob) -> dict[str, dict[str, float]]:
    from tunelab.evaluation.report import markdown_table, score_files
    from tunelab.models import load_model

    started = time.perf_counter()
    print(f"tunelab demo: prompting {job.model} on {job.limit} DialogSum test dialogues", file=sys.stderr)
    loaded = load_model(job.model)
    files = []
    human = job.out_dir / "human-baseline.jsonl"
    write_jsonl(human, human_baseline(load_examples("dialogsum", "test", limit=job.limit)))
    files.append(human)
    settings = GenerationSettings(max_new_tokens=job.max_new_tokens, batch_size=job.batch_size)
    for k in job.shots:
        prompt_job = PromptJob(data="dialogsum", split="test", limit=job.limit, shots=k, model=job.model, generation=settings)
        rows = run_prompt(prompt_job, loaded, desc=f"{k}-shot")
        path = job.out_dir / f"{k}-shot.jsonl"
        write_jsonl(path, rows)
        files.append(path)
    summarizer = None
    if job.train_steps:
        path, summarizer = _demo_lora(job, settings)
        files.append(path)
    results = score_files(files)
    table = markdown_table(results)
    write_json(job.out_dir / "metrics.json", results)
    write_text(job.out_dir / "table.md", table + "\n")
    print(table)
    if summarizer is not None and job.classifier_steps and job.ppo_steps:
        _demo_alignment(job, summarizer)
    print(
        f"\n{time.perf_counter() - started:.0f} s. ROUGE in %, mean over (prediction, reference) pairs; "
        f"human-baseline = reference 1 scored against references 2-3. Files in {job.out_dir}/",
        file=sys.stderr,
    )
    return results
