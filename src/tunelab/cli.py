"""The `tunelab` command. Only argparse is imported up front so `tunelab --help` is
instant; each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


_TYPES = {"str": str, "int": int, "float": float, "Path": Path}


def _add_dataclass_options(group, cls, *, skip: tuple[str, ...] = (), required: tuple[str, ...] = (),
                           defaults: dict | None = None) -> None:
    """One option per dataclass field, help text and default from the field itself, so
    the CLI and the Python API can't drift apart. ``defaults`` overrides shown defaults
    for a command whose own default differs."""
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        default = (defaults or {}).get(f.name, default)
        shown = default is not None and default is not False and default != ()
        help_text = f.metadata["help"].rstrip(".") + (f" (default: {default})." if shown else ".")
        base = f.type.replace(" | None", "")
        if base == "bool":  # a setting that is on by default is turned off with --no-...
            action = argparse.BooleanOptionalAction if default is True else "store_true"
            group.add_argument(flag, action=action, default=None, help=help_text)
        elif base in ("tuple[str, ...]", "list[str]"):
            group.add_argument(flag, action="append", default=None, metavar="TEXT", help=help_text + " Repeatable.")
        else:
            group.add_argument(flag, type=_TYPES[base], default=None, choices=f.metadata.get("choices"),
                               required=f.name in required, help=help_text)


def _from_args(cls, args: argparse.Namespace, **fixed):
    """Build ``cls`` from the options the user gave; the others keep the dataclass defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    for f in dataclasses.fields(cls):
        if f.name in values and f.type.startswith("tuple"):
            values[f.name] = tuple(values[f.name])
    return cls(**{**values, **fixed})


def _prompt_parser(sub) -> None:
    from tunelab.generation.settings import GenerationSettings
    from tunelab.jobs import PromptJob

    p = sub.add_parser(
        "prompt",
        help="zero/one/few-shot prompting of a model over a dataset",
        description="Prompt a model on every example of a dataset and write one JSONL row per example: "
        '{"id", "prompt", "prediction", "references", ...}.',
    )
    _add_dataclass_options(p, PromptJob, skip=("shot_ids",), required=("data",))
    p.add_argument("--shot-ids", help=next(f for f in dataclasses.fields(PromptJob) if f.name == "shot_ids").metadata["help"])
    p.add_argument("--out", type=Path, required=True, help="output JSONL file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_dataclass_options(p.add_argument_group("generation"), GenerationSettings)


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score prediction files with ROUGE, BLEU and chrF, side by side",
        description="Score one or more prediction files (rows with 'prediction' and 'references') and print a Markdown comparison table.",
    )
    p.add_argument("predictions", nargs="+", type=Path, help="JSONL files written by `tunelab prompt`")
    p.add_argument("--multi-ref", choices=["mean", "max"], default="mean", help="several references: mean over (prediction, reference) pairs, or each prediction's best reference")
    p.add_argument("--out", type=Path, help="write metrics as JSON (ROUGE as fractions 0-1, BLEU/chrF 0-100)")
    p.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")


def _demo_parser(sub) -> None:
    from tunelab.jobs import DemoJob

    p = sub.add_parser("demo", help="zero-, one- and few-shot DialogSum summaries, a short LoRA fine-tune, then a few PPO detox steps, on the default model")
    _add_dataclass_options(p, DemoJob, skip=("shots",))
    p.add_argument("--shots", default="0,1,3", help="Comma-separated shot counts to compare (default: 0,1,3).")


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train with a recipe: fine-tuning (full, BitFit, LoRA, soft prompts, IA3, adapters), reward models, PPO, DPO",
        description="Run a training recipe (YAML); its `stage` (sft, reward, classifier, ppo, dpo) picks the trainer. "
        "Any recipe field can be overridden as key=value, "
        "e.g. `tunelab train recipes/dialogsum-lora.yaml lora.r=16 max_steps=20`. "
        "Several GPUs/nodes: `accelerate launch -m tunelab train ...`.",
    )
    p.add_argument("recipe", type=Path, help="recipe YAML file (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields to override")
    p.add_argument("--output-dir", help="where checkpoints, logs and the final artifact go (overrides output_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="fold a LoRA adapter into its base model and save a plain model folder")
    p.add_argument("--model", required=True, help="the base model the adapter was trained on")
    p.add_argument("--adapter", required=True, type=Path, help="LoRA adapter folder (tunelab train's final/)")
    p.add_argument("--out", required=True, type=Path, help="output model folder")


def _benchmark_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="classification benchmarks (SST-2, BoolQ, RTE, CB, COPA) by answer log-likelihood",
        description="Score a model on classification tasks: the answer is the option with the highest "
        "log-likelihood after the context. Compare runs with `tunelab forgetting`.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name, folder, .gguf file or hub id")
    p.add_argument("--adapter", help="trained adapter folder to apply")
    p.add_argument("--tasks", default="sst2,boolq,rte,cb,copa", help="comma-separated tasks (default: all five)")
    p.add_argument("--limit", type=int, default=200, help="rows per task (default 200; 0 = all)")
    p.add_argument("--shots", type=int, default=0, help="solved training examples before each question (default 0)")
    p.add_argument("--out", type=Path, help="write accuracies as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _evaluate_parser(sub) -> None:
    from tunelab.evaluation.scenarios import SCENARIOS, SUITES
    from tunelab.evaluation.settings import EvalSettings

    p = sub.add_parser(
        "evaluate",
        help="the holistic report: accuracy, calibration, robustness, fairness, bias and efficiency, per model",
        description="Score models on multiple-choice scenarios (HELM's metric set, lm-eval's formats on request) and "
        "write results.json, items.jsonl and report.md. Results are cached per model, scenario and settings, so "
        f"adding a model scores only that one. Scenarios: {', '.join(SCENARIOS)}.",
    )
    p.add_argument("--models", default="base", help="comma-separated: 'base', model folders or names, adapter folders "
                   "(applied to --base); 'label=model' names one in the report (default: base)")
    p.add_argument("--base", default="smollm2-135m-instruct", help="the base model, and what adapters apply to")
    p.add_argument("--suite", choices=list(SUITES), default="holistic",
                   help="holistic: every scenario; lm-eval: the tasks lm-evaluation-harness has (default: holistic)")
    p.add_argument("--scenarios", help="comma-separated scenarios instead of the suite's")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="report folder (default: runs/eval)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_dataclass_options(p.add_argument_group("evaluation"), EvalSettings, skip=("scenarios",))


def _forgetting_parser(sub) -> None:
    p = sub.add_parser("forgetting", help="compare benchmark results before and after fine-tuning")
    p.add_argument("scores", nargs="+", type=Path, help="`tunelab benchmark --out` files; the first is the reference")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")


def _reward_parser(sub) -> None:
    p = sub.add_parser("reward", help="score texts with a reward model or classifier; pair accuracy on preference data")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    score = actions.add_parser("score", help="print one reward per text")
    score.add_argument("--model", required=True, help="reward model or classifier folder (tunelab train output)")
    score.add_argument("--texts", required=True, type=Path,
                       help="a .txt file (one text per line) or JSONL/CSV rows with 'text' (or 'response') and optional 'prompt'")
    score.add_argument("--output", choices=["logit", "probability", "log_probability"], default="logit",
                       help="for a classifier: the class's logit, probability or log-probability")
    score.add_argument("--label", help="for a classifier: the class to score (default: the one it rewards)")
    score.add_argument("--out", type=Path, help="also write rows with their reward as JSONL")
    evaluate = actions.add_parser("eval", help="pair accuracy and mean margin on preference pairs")
    evaluate.add_argument("--model", required=True, help="reward model folder (tunelab train output)")
    evaluate.add_argument("--data", required=True, help="pairs JSONL (pairs, rankings or hh-rlhf transcripts) or 'hh-rlhf'")
    evaluate.add_argument("--split", help="split of a built-in dataset (hh-rlhf: train or test)")
    evaluate.add_argument("--limit", type=int, help="first N pairs only")
    evaluate.add_argument("--buckets", type=int, default=4, help="margin buckets for accuracy by confidence (default 4)")
    evaluate.add_argument("--out", type=Path, help="write the metrics as JSON")
    calibrate = actions.add_parser(
        "calibrate", help="fit a classifier's temperature on a validation slice; held-out ECE before and after",
        description="Temperature scaling (Guo et al., 2017): fit T on labelled validation rows, save it in the "
        "classifier folder (its probabilities use it from then on), and report held-out accuracy, NLL, ECE "
        "(10 and 1 equal-mass bins), Brier score and per-class F1 before and after.")
    calibrate.add_argument("--model", required=True, help="classifier folder (tunelab train output)")
    calibrate.add_argument("--data", required=True, help="labelled rows (CSV/JSONL) or a built-in dataset, e.g. davidson")
    calibrate.add_argument("--split", help="split of a built-in dataset to take the validation slice from")
    calibrate.add_argument("--skip", type=int, default=0,
                           help="skip the first N rows (those the classifier was trained on, e.g. its recipe's limit)")
    calibrate.add_argument("--limit", type=int, default=1000, help="validation rows after the skipped ones")
    calibrate.add_argument("--eval-data", required=True, help="held-out labelled rows or a built-in dataset")
    calibrate.add_argument("--eval-split", help="split of a built-in held-out dataset, e.g. test")
    calibrate.add_argument("--eval-limit", type=int, help="first N held-out rows only")
    calibrate.add_argument("--text-field", default="tweet", help="column holding the text")
    calibrate.add_argument("--label-field", default="class", help="column holding the label (index or class name)")
    calibrate.add_argument("--out", type=Path, help="also write the report as JSON")


def _label_parser(sub) -> None:
    from tunelab.generation.settings import GenerationSettings

    p = sub.add_parser("label", help="human feedback: generate completions, rank them in a browser, export preference pairs")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    prepare = actions.add_parser("prepare", help="add prompts with k completions each to a labeling database")
    prepare.add_argument("--db", required=True, type=Path, help="the SQLite labeling database (created if new)")
    source = prepare.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", type=Path, help="JSONL/CSV rows with 'prompt' (and optional 'id'): generate completions with --model")
    source.add_argument("--completions", type=Path, help="JSONL rows {'prompt': ..., 'completions': [...]} made elsewhere")
    prepare.add_argument("--model", help="model to sample completions from (a name, a folder or a hub id)")
    prepare.add_argument("--adapter", help="a trained adapter folder to apply to --model")
    prepare.add_argument("--k", type=int, default=4, help="completions per prompt (default: 4)")
    prepare.add_argument("--criterion", help="what labelers rank by, shown above every prompt (stored in the database)")
    prepare.add_argument("--labels-per-prompt", type=int, help="how many labelers judge each prompt (default: 3)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    sampling = prepare.add_argument_group("sampling (with --prompts)")
    sampling.add_argument("--max-new-tokens", type=int, default=128, help="most new tokens per completion (default: 128)")
    sampling.add_argument("--temperature", type=float, default=0.9, help="sampling temperature (default: 0.9)")
    sampling.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    sampling.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0 = off (default: 0)")
    sampling.add_argument("--batch-size", type=int, default=GenerationSettings.batch_size, help="sequences per batch")
    sampling.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    serve = actions.add_parser("serve", help="run the labeling web app")
    serve.add_argument("--db", required=True, type=Path, help="the labeling database")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--secure-cookie", action="store_true",
                       help="served over HTTPS (behind a TLS proxy): a __Host- prefixed Secure cookie, and HSTS")
    _http_options(serve, max_body_bytes=LABEL_MAX_BODY_BYTES)
    users = actions.add_parser("users", help="labelers and admins")
    user_actions = users.add_subparsers(dest="user_action", metavar="ACTION", required=True)
    add = user_actions.add_parser("add", help="create a user and print their personal token (shown once)")
    add.add_argument("name", help="the user's name")
    add.add_argument("--db", required=True, type=Path, help="the labeling database")
    add.add_argument("--admin", action="store_true", help="an admin sees progress and agreement")
    revoke = user_actions.add_parser("revoke", help="stop a user's token working at once (their judgements stay)")
    revoke.add_argument("name", help="the user's name")
    revoke.add_argument("--db", required=True, type=Path, help="the labeling database")
    rotate = user_actions.add_parser("rotate", help="give a user a new token (the old one stops working); print it once")
    rotate.add_argument("name", help="the user's name")
    rotate.add_argument("--db", required=True, type=Path, help="the labeling database")
    listing = user_actions.add_parser("list", help="list users")
    listing.add_argument("--db", required=True, type=Path, help="the labeling database")
    status = actions.add_parser("status", help="progress and inter-labeler agreement")
    status.add_argument("--db", required=True, type=Path, help="the labeling database")
    status.add_argument("--out", type=Path, help="also write the full report (per prompt, per labeler) as JSON")
    export = actions.add_parser("export", help="write preference pairs (and rankings) for `tunelab train` stage reward/dpo")
    export.add_argument("--db", required=True, type=Path, help="the labeling database")
    export.add_argument("--out", required=True, type=Path, help="pairs JSONL: prompt, chosen, rejected, margin, id")
    export.add_argument("--rankings", type=Path, help="also write the rankings JSONL (prompt, completions, ranks, id)")


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible API over a model and its adapters, chosen per request")
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model: a name, a folder or a hub id (default: smollm2-135m-instruct)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="an adapter tunelab trained (LoRA, IA3, prompt/prefix tuning, bottleneck, selective), served as model NAME. Repeatable.")
    p.add_argument("--adapter-dir", type=Path, help="the only directory the admin API may load adapters from")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--dtype", default="auto", help="weights dtype: auto, float32, bfloat16, float16 (default: auto)")
    keys = p.add_argument_group("keys (files or the environment: a key on the command line shows in `ps`)")
    keys.add_argument("--api-key-file", type=Path, help="require one of the keys in this file (one per line; "
                      "Authorization: Bearer KEY). Also read from TUNELAB_API_KEYS (comma-separated)")
    keys.add_argument("--admin-token-file", type=Path, help="enable /admin/adapters with the token in this file "
                      "(or TUNELAB_ADMIN_TOKEN); at least 16 characters")
    keys.add_argument("--api-key", action="append", default=[], help="a key on the command line (prefer --api-key-file); repeatable")
    keys.add_argument("--admin-token", help="the admin token on the command line (prefer --admin-token-file)")
    from tunelab.serving.settings import ServerSettings

    _add_dataclass_options(p.add_argument_group("limits"), ServerSettings, skip=("api_keys", "admin_token", "http"))
    _http_options(p)


LABEL_MAX_BODY_BYTES = 64 * 1024  # the labeling app's bodies are small JSON rankings


def _http_options(parser, **defaults) -> None:
    from tunelab.web import HttpLimits

    group = parser.add_argument_group("connections (tunelab.web.HttpLimits)")
    _add_dataclass_options(group, HttpLimits, defaults=defaults)
    group.set_defaults(**{f"http_default_{k}": v for k, v in defaults.items()})


def _http_limits(args: argparse.Namespace):
    from tunelab.web import HttpLimits

    defaults = {k[len("http_default_"):]: v for k, v in vars(args).items() if k.startswith("http_default_")}
    return _from_args(HttpLimits, args, **{k: v for k, v in defaults.items() if getattr(args, k, None) is None})


def _agent_parser(sub) -> None:
    from tunelab.agents.sandbox import SandboxLimits
    from tunelab.agents.tools import BUILTIN

    p = sub.add_parser("agent", help="the model as an agent with tools; run one tool directly")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    tool = actions.add_parser("tool", help="run one tool on JSON arguments and print its observation",
                              description="Run one tool as an agent would (arguments checked against its schema); "
                              "for debugging a tool, and for trying the sandbox from the shell. "
                              "Exit status 1 when the call failed.")
    tool.add_argument("name", choices=BUILTIN, help="the tool")
    tool.add_argument("--args", required=True, help='its arguments as JSON, e.g. \'{"expression": "48/2"}\'')
    tool.add_argument("--corpus", default="boolq",
                      help="search: a corpus file (JSONL with 'text', or paragraphs of text) or 'boolq' "
                      "(BoolQ's validation passages; default)")
    tool.add_argument("--k", type=int, default=3, help="search: passages returned (default 3)")
    _add_dataclass_options(tool.add_argument_group("sandbox (the python tool)"), SandboxLimits)

    run = actions.add_parser("run", help="answer a question as an agent (ReAct with tools, or PAL) and print the trace")
    run.add_argument("question", help="the task")
    run.add_argument("--tools", default="calculator", help=f"tools for ReAct, comma-separated: {', '.join(BUILTIN[:-1])} "
                     "(finish is always there; default: calculator)")
    run.add_argument("--mode", choices=["react", "pal"], default="react", help="ReAct with the tools, or PAL (default react)")
    run.add_argument("--max-steps", type=int, default=6, help="react: the most model replies (default 6)")
    run.add_argument("--max-tokens", type=int, default=320, help="new tokens per model reply (default 320)")
    run.add_argument("--corpus", default="boolq", help="the search tool's corpus (a file, or 'boolq'; default boolq)")
    run.add_argument("--out", type=Path, help="also write the trace as JSON")
    _agent_model_options(run)

    from tunelab.agents.tasks import AgentEvalSettings

    evaluate = actions.add_parser("eval", help="score an agent on GSM8K or BoolQ with retrieval; metrics.json and traces",
                                  description="Score a mode on a data set; writes DIR/metrics.json (n, accuracy with "
                                  "its 95% interval, parse_rate, ...) and DIR/traces.jsonl (every trace).")
    _add_dataclass_options(evaluate, AgentEvalSettings)
    evaluate.add_argument("--out", type=Path, required=True, help="output folder")
    _agent_model_options(evaluate)


def _agent_model_options(parser) -> None:
    group = parser.add_argument_group("the model")
    group.add_argument("--model", default="smollm2-135m-instruct", help="a model (name, folder or hub id; default "
                       "smollm2-135m-instruct, the embedded one)")
    group.add_argument("--adapter", help="an adapter folder to apply (any tunelab or peft adapter)")
    group.add_argument("--endpoint", help="an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) instead of "
                       "a local model; steps are asked for with response_format")
    group.add_argument("--endpoint-model", default="base", help="the model name sent to --endpoint (default base)")
    group.add_argument("--api-key", help="bearer token for --endpoint (default: $TUNELAB_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="The generative-AI lifecycle on one machine: prompt, fine-tune, evaluate, align, serve.",
    )
    parser.add_argument("--version", action="version", version=f"tunelab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _prompt_parser(sub)
    _eval_parser(sub)
    _demo_parser(sub)
    _train_parser(sub)
    _merge_parser(sub)
    _benchmark_parser(sub)
    _evaluate_parser(sub)
    _forgetting_parser(sub)
    _reward_parser(sub)
    _label_parser(sub)
    _serve_parser(sub)
    _agent_parser(sub)
    return parser


def _version() -> str:
    from tunelab import __version__

    return __version__


def cmd_prompt(args: argparse.Namespace) -> int:
    from tunelab.generation.settings import GenerationSettings
    from tunelab.files import write_jsonl
    from tunelab.jobs import PromptJob, run_prompt

    shot_ids = [s.strip() for s in args.shot_ids.split(",") if s.strip()] if args.shot_ids else None
    job = _from_args(PromptJob, args, shot_ids=shot_ids, generation=_from_args(GenerationSettings, args))
    rows = run_prompt(job, progress=not args.no_progress)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tunelab.evaluation.report import markdown_table, score_files
    from tunelab.files import write_json, write_text

    results = score_files(args.predictions, args.multi_ref)
    table = markdown_table(results)
    print(table)
    if args.out:
        write_json(args.out, results)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tunelab.jobs import DemoJob, run_demo

    try:
        shots = tuple(int(s) for s in args.shots.split(","))
    except ValueError:
        raise SystemExit(f"tunelab demo: --shots takes comma-separated integers, got '{args.shots}'") from None
    run_demo(_from_args(DemoJob, args, shots=shots))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tunelab.recipe import load_recipe, train

    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    config = load_recipe(args.recipe, overrides)
    result = train(config, resume=args.resume, progress=not args.no_progress)
    summary = result.summary
    if summary:
        stage = "" if config.stage == "sft" else f"{config.stage} "
        print(
            f"{stage}{config.method}: {summary['steps']} steps in {summary['train_seconds']} s, "
            f"trainable {summary['trainable_params']:,} ({summary['trainable_percent']:.3f}%), "
            f"peak memory {summary['peak_memory_mb']:.0f} MB, artifact {summary['artifact_mb']:.2f} MB -> {result.artifact}"
        )
        held_out = {k: v for k, v in summary.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if held_out:
            print("held-out: " + ", ".join(f"{k[5:]} {v:.4g}" for k, v in held_out.items()))
        if "eval" in summary:
            print(_before_after_table(summary["eval"]))
    return 0


def _before_after_table(comparison: dict) -> str:
    """Online RL's held-out comparison of the policy before and after training."""
    keys = [k for k in ("reward_mean", "label_probability_mean", "response_tokens_mean", "distinct_2", "rouge1", "rouge2", "rougeL")
            if k in comparison["before"]]
    lines = ["| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name in ("before", "after"):
        lines.append(f"| {name} | " + " | ".join(f"{comparison[name][k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def cmd_merge(args: argparse.Namespace) -> int:
    from tunelab.models import load_for_inference
    from tunelab.training.methods.lora import merge

    loaded = load_for_inference(args.model, str(args.adapter), device="cpu")
    model = loaded.model
    if not hasattr(model, "merge_and_unload"):
        from tunelab.errors import TunelabError

        raise TunelabError(f"{args.adapter} is not a LoRA/IA3 adapter: only those fold into the base weights")
    merged = merge(model)
    merged.save_pretrained(args.out)
    loaded.tokenizer.save_pretrained(args.out)
    print(f"merged {args.adapter} into {args.model} -> {args.out}", file=sys.stderr)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from tunelab.evaluation.benchmarks import run_benchmarks
    from tunelab.files import write_json
    from tunelab.models import load_for_inference

    loaded = load_for_inference(args.model, args.adapter)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = run_benchmarks(loaded.model, loaded.tokenizer, tasks, limit=args.limit or None, shots=args.shots, progress=not args.no_progress)
    print("| task | accuracy | n |\n|---|---:|---:|")
    for task, result in results.items():
        print(f"| {task} | {100 * result['accuracy']:.1f} | {result['n']} |")
    if args.out:
        write_json(args.out, results)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tunelab.evaluation.holistic import evaluate_models, model_specs
    from tunelab.evaluation.scenarios import SUITES
    from tunelab.evaluation.settings import EvalSettings
    from tunelab.models import load_for_inference

    names = [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else SUITES[args.suite]
    settings = _from_args(EvalSettings, args, scenarios=tuple(names))
    specs = model_specs([m.strip() for m in args.models.split(",") if m.strip()], args.base)
    report = evaluate_models(specs, settings, args.out, lambda spec: load_for_inference(spec.model, spec.adapter),
                             progress=not args.no_progress, toxicity=_toxicity(settings.toxicity))
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out / 'results.json'}, items.jsonl and report.md for {len(report['models'])} models",
          file=sys.stderr)
    return 0


def _toxicity(folder: str | None):
    """texts -> 1 - P(the classifier's reward label): for the toxicity classifier, the
    probability of anything but 'neither' (Lab B's measure)."""
    if not folder:
        return None
    from tunelab.alignment.reward import ModelScorer

    scorer = ModelScorer(folder, output="probability")
    return lambda texts: (1 - scorer([""] * len(texts), list(texts))).tolist()


def cmd_forgetting(args: argparse.Namespace) -> int:
    from tunelab.evaluation.benchmarks import forgetting_table, read_scores
    from tunelab.evaluation.report import labels_for
    from tunelab.files import write_text

    runs = {label: read_scores(path) for label, path in zip(labels_for(args.scores), args.scores)}
    table = forgetting_table(runs)
    print(table)
    if args.out:
        write_text(args.out, table + "\n")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from tunelab.alignment.reward import ModelScorer, calibrate_classifier, load_labelled
    from tunelab.alignment.settings import ClassifierSettings
    from tunelab.errors import TunelabError
    from tunelab.files import write_json

    scorer = ModelScorer(args.model, calibrated=False)
    if len(scorer.labels) < 2:
        raise TunelabError(f"{args.model}: a reward model has one output, nothing to calibrate (a classifier has classes)")
    fields = ClassifierSettings(text_field=args.text_field, label_field=args.label_field, labels=scorer.labels)
    validation = load_labelled(args.data, args.split, fields, args.skip + args.limit)[args.skip:]
    if not validation:
        raise TunelabError(f"{args.data}: no rows after skipping {args.skip}")
    held_out = load_labelled(args.eval_data, args.eval_split, fields, args.eval_limit)
    report = calibrate_classifier(scorer, validation, held_out)
    print(f"temperature {report['temperature']:.3f} (fitted on {len(validation)} rows); {len(held_out)} held-out rows:")
    for name in ("accuracy", "nll", "ece_10", "ece_1", "brier"):
        print(f"  {name:9s} {report['before'][name]:.4f} -> {report['after'][name]:.4f}")
    print("  F1 " + ", ".join(f"{k[3:]} {v:.3f}" for k, v in report["f1"].items() if k.startswith("f1_")))
    if args.out:
        write_json(args.out, report)
    return 0


def cmd_reward(args: argparse.Namespace) -> int:
    from tunelab.alignment.reward import ModelScorer, evaluate_pairs, read_texts
    from tunelab.files import write_json, write_jsonl

    if args.action == "calibrate":
        return _calibrate(args)
    if args.action == "eval":
        metrics = evaluate_pairs(ModelScorer(args.model), args.data, args.split, args.limit, max(1, args.buckets))
        print(f"pairs {metrics['pairs']}  accuracy {metrics['accuracy']:.4f}  mean margin {metrics['margin']:.4f}  "
              f"loss {metrics['loss']:.4f}  ECE {metrics['ece_10']:.4f}")
        print("| |margin| | pairs | accuracy | σ(|margin|) |\n|---|---:|---:|---:|")
        for bucket in metrics["by_margin"]:
            print(f"| {bucket['margin_from']:.3f}–{bucket['margin_to']:.3f} | {bucket['pairs']} | "
                  f"{bucket['accuracy']:.3f} | {bucket['probability']:.3f} |")
        if args.out:
            write_json(args.out, metrics)
        return 0
    rows = read_texts(args.texts)
    scorer = ModelScorer(args.model, output=args.output, label=args.label)
    rewards = scorer([r["prompt"] for r in rows], [r["text"] for r in rows]).tolist()
    for row, reward in zip(rows, rewards):
        print(f"{reward:.4f}\t{row['text'][:100]!r}")
    if args.out:
        write_jsonl(args.out, ({**row, "reward": reward} for row, reward in zip(rows, rewards)))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    if args.action == "prepare":
        from tunelab.feedback.prepare import prepare
        from tunelab.generation.settings import GenerationSettings

        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature,
                                      top_p=args.top_p, top_k=args.top_k, batch_size=args.batch_size, seed=args.seed)
        count = prepare(args.db, prompts=args.prompts, completions=args.completions, model=args.model, adapter=args.adapter,
                        k=args.k, settings=settings, criterion=args.criterion, labels_per_prompt=args.labels_per_prompt,
                        progress=not args.no_progress)
        print(f"added {count} prompts to {args.db}")
        return 0
    if args.action == "serve":
        from tunelab.feedback.app import serve

        print(f"labeling {args.db} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
        serve(args.db, args.host, args.port, secure_cookie=args.secure_cookie, http=_http_limits(args))
        return 0
    if args.action == "export":
        from tunelab.feedback.export import export

        counts = export(args.db, args.out, args.rankings)
        print(f"{counts['rankings']} rankings -> {counts['pairs']} pairs in {args.out}"
              + (f"; rankings in {args.rankings}" if args.rankings else ""))
        return 0
    from tunelab.feedback.store import LabelStore

    store = LabelStore(args.db, create=args.action == "users" and args.user_action == "add")
    try:
        if args.action == "users" and args.user_action == "add":
            token = store.add_user(args.name, admin=args.admin)
            print(f"{'admin' if args.admin else 'labeler'} {args.name}: token {token}\n(shown once; only its hash is stored)")
        elif args.action == "users" and args.user_action == "revoke":
            store.revoke(args.name)
            print(f"{args.name}: token revoked (signed-in sessions end at their next request); "
                  f"`tunelab label users rotate {args.name}` issues a new one")
        elif args.action == "users" and args.user_action == "rotate":
            token = store.rotate(args.name)
            print(f"{args.name}: new token {token}\n(shown once; the old token no longer works)")
        elif args.action == "users":
            for user in store.users():
                print("\t".join([str(user.id), user.name] + (["admin"] if user.is_admin else [])
                                 + (["revoked"] if user.revoked else [])))
        else:
            from tunelab.feedback.report import labeling_report

            report = labeling_report(store)
            progress = report["progress"]
            print(f"{progress['judgements']} of {progress['wanted']} judgements; {progress['prompts_complete']} of "
                  f"{progress['prompts']} prompts complete")
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"agreement {fmt(report['agreement'])}  Kendall tau-b {fmt(report['kendall_tau'])}  "
                  f"({report['labeler_pairs']} labeler pairs)")
            for name, row in report["per_labeler"].items():
                print(f"  {name}: {row['judgements']} judged, agreement {fmt(row['agreement'])}, tau {fmt(row['kendall_tau'])}")
            if args.out:
                from tunelab.files import write_json

                write_json(args.out, report)
    finally:
        store.close()
    return 0


def _secrets(args: argparse.Namespace) -> tuple[tuple[str, ...], str | None]:
    """API keys and the admin token from files, the environment and (discouraged) the
    command line, where every user of the machine can read them in `ps`."""
    import os

    from tunelab.web import read_secret_lines, unique

    keys = list(args.api_key) + [k.strip() for k in os.environ.get("TUNELAB_API_KEYS", "").split(",") if k.strip()]
    if args.api_key_file:
        keys += read_secret_lines(args.api_key_file)
    token = args.admin_token or os.environ.get("TUNELAB_ADMIN_TOKEN") or None
    if args.admin_token_file:
        lines = read_secret_lines(args.admin_token_file)
        if len(lines) != 1:
            raise SystemExit(f"tunelab serve: {args.admin_token_file} must hold one token, on one line")
        token = lines[0]
    if args.api_key or args.admin_token:
        print("tunelab serve: note: keys given on the command line are visible to every user in `ps`; "
              "prefer --api-key-file / --admin-token-file or the environment", file=sys.stderr)
    return unique(keys), token


def cmd_serve(args: argparse.Namespace) -> int:
    from tunelab.serving.app import ServerSettings, build_server, serve
    from tunelab.web import is_loopback

    keys, token = _secrets(args)
    settings = _from_args(ServerSettings, args, api_keys=keys, admin_token=token, http=_http_limits(args))
    app = build_server(args.model, args.adapter, adapter_dir=args.adapter_dir, settings=settings, dtype=args.dtype)
    if not is_loopback(args.host) and not keys:
        print(f"tunelab serve: warning: listening on {args.host} with no API key; anyone who can reach it can use it",
              file=sys.stderr)
    print(f"serving {args.model} as 'base'" + "".join(f", {a.split('=')[0]}" for a in args.adapter)
          + f" at http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
    serve(app, args.host, args.port)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    return {"tool": _agent_tool, "run": _agent_run, "eval": _agent_eval}[args.action](args)


def _agent_backend(args: argparse.Namespace):
    """(backend, loaded model or None)."""
    import os

    from tunelab.agents.backends import LocalBackend, OpenAIBackend

    if args.endpoint:
        return OpenAIBackend(args.endpoint, args.endpoint_model, args.api_key or os.environ.get("TUNELAB_API_KEY")), None
    from tunelab.models import load_for_inference

    loaded = load_for_inference(args.model, args.adapter)
    return LocalBackend(loaded), loaded


def _agent_run(args: argparse.Namespace) -> int:
    import json

    from tunelab.agents.loops import run_pal, run_react
    from tunelab.agents.tools import make_tools
    from tunelab.files import write_json

    backend, _ = _agent_backend(args)
    if args.mode == "pal":
        result = run_pal(args.question, backend, max_tokens=args.max_tokens)
    else:
        names = [n.strip() for n in args.tools.split(",") if n.strip()]
        tools = make_tools(names, index=_search_index(args.corpus) if "search" in names else None)
        result = run_react(args.question, tools, backend, max_steps=args.max_steps, max_tokens=args.max_tokens)
    for n, step in enumerate(result.steps, 1):
        if step.thought:
            print(f"Thought {n}: {step.thought}")
        print(f"Action {n}: {step.tool} {json.dumps(step.arguments)}" if step.tool else f"Reply {n}: {step.raw}")
        print(f"Observation {n}: {step.observation}" + (f"  [{step.error}]" if step.error else ""))
    print(f"Answer: {result.answer}  ({result.stop_reason}, {len(result.steps)} steps)")
    if args.out:
        write_json(args.out, result.to_json())
    return 0 if result.answer is not None else 1


def _agent_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tunelab.agents.tasks import AgentEvalSettings, load_rows, run_boolq_rag, run_gsm8k
    from tunelab.files import write_json, write_jsonl

    settings = _from_args(AgentEvalSettings, args)
    settings.validate()
    rows = load_rows(settings)
    backend, loaded = _agent_backend(args) if not (settings.task == "boolq-rag" and args.endpoint) else (None, None)
    if settings.task == "boolq-rag" and loaded is None:
        from tunelab.errors import TunelabError

        raise TunelabError("boolq-rag scores answers by log-likelihood: it needs a local model, not --endpoint")
    with tqdm(total=len(rows), desc=f"{settings.task} · {settings.mode}", unit="problem") as bar:
        if settings.task == "gsm8k":
            metrics, traces = run_gsm8k(rows, settings, backend, loaded, progress=bar.update)
        else:
            metrics, traces = run_boolq_rag(rows, settings, loaded, progress=bar.update)
    metrics = {"task": settings.task, "mode": settings.mode, "model": args.endpoint or args.model,
               "adapter": args.adapter, **metrics}
    write_json(args.out / "metrics.json", metrics)
    write_jsonl(args.out / "traces.jsonl", traces)
    interval = metrics.get("accuracy_ci")
    print(f"{settings.task} {settings.mode}: accuracy {100 * metrics['accuracy']:.1f}%"
          + (f" (95% interval {100 * interval[0]:.1f}-{100 * interval[1]:.1f})" if interval else "")
          + f", parse rate {100 * metrics['parse_rate']:.1f}%, n {metrics['n']}; wrote {args.out}")
    return 0


def _agent_tool(args: argparse.Namespace) -> int:
    from tunelab.agents.sandbox import SandboxLimits
    from tunelab.agents.tools import make_tools

    index = _search_index(args.corpus) if args.name == "search" else None
    tools = make_tools([args.name], index=index, limits=_from_args(SandboxLimits, args), k=args.k)
    observation = tools[args.name](args.args)
    print(observation.text)
    return 1 if observation.error else 0


def _search_index(corpus: str):
    from tunelab.agents.search import SearchIndex, boolq_passages, passages_from_file

    return SearchIndex(boolq_passages() if corpus == "boolq" else passages_from_file(corpus))


COMMANDS = {
    "prompt": cmd_prompt, "eval": cmd_eval, "demo": cmd_demo, "train": cmd_train, "merge": cmd_merge,
    "benchmark": cmd_benchmark, "evaluate": cmd_evaluate, "forgetting": cmd_forgetting, "reward": cmd_reward,
    "label": cmd_label, "serve": cmd_serve, "agent": cmd_agent,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from tunelab.errors import TunelabError

    try:
        return COMMANDS[args.command](args)
    except TunelabError as exc:
        print(f"tunelab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tunelab {args.command}: interrupted", file=sys.stderr)
        return 130
