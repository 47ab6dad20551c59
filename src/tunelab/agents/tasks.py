"""`tunelab agent eval`: score an agent on a data set and keep every trace.

- ``gsm8k``: exact match of the final number, by mode — ``direct`` (the number), ``cot``
  (a worked solution), ``pal`` (a program run in the sandbox), ``react`` (ReAct with the
  calculator), ``calculator`` (the solution written with calculator calls the agent
  answers, as in the training solutions; a local model only).
- ``boolq-rag``: BoolQ's questions answered from retrieved passages: ``closed`` (the
  question alone), ``bm25`` (the top-k passages BM25 finds among all of BoolQ's
  validation passages), ``gold`` (the question's own passage, the upper bound); yes/no by
  answer log-likelihood, also contextually calibrated; with retrieval recall@k.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.agents.backends import Backend, complete_many, render_chat
from tunelab.agents.gsm8k import few_shot, gold_answer, last_number, same_number, user_turn
from tunelab.agents.loops import AgentResult, Step, pal_messages, run_program, run_react
from tunelab.agents.sandbox import SandboxLimits
from tunelab.agents.tools import make_tools
from tunelab.errors import TunelabError

TASKS = {"gsm8k": ("react", "direct", "cot", "pal", "calculator"), "boolq-rag": ("bm25", "closed", "gold")}


@dataclass
class AgentEvalSettings:
    """What `tunelab agent eval` scores and how."""

    task: str = field(default="gsm8k", metadata={"help": "The task.", "choices": tuple(TASKS)})
    mode: str | None = field(default=None, metadata={
        "help": "gsm8k: react (default), direct, cot, pal or calculator; boolq-rag: bm25 (default), closed or gold."})
    data: str | None = field(default=None, metadata={
        "help": "A file of rows shaped like the built-in split's (default: the built-in data)."})
    split: str = field(default="test", metadata={"help": "The built-in split (gsm8k: train, dev, test)."})
    limit: int | None = field(default=None, metadata={"help": "The first N rows only."})
    shots: int = field(default=2, metadata={"help": "gsm8k: solved training examples before each problem."})
    max_steps: int = field(default=6, metadata={"help": "react: the most model replies per problem."})
    max_tokens: int = field(default=320, metadata={"help": "New tokens per model reply."})
    k: int = field(default=3, metadata={"help": "boolq-rag: passages retrieved."})
    bootstrap: int = field(default=1000, metadata={"help": "Resamples for the 95%% interval of accuracy."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})

    def validate(self) -> None:
        if self.task not in TASKS:
            raise TunelabError(f"unknown task '{self.task}'; tasks: {', '.join(TASKS)}")
        self.mode = self.mode or TASKS[self.task][0]
        if self.mode not in TASKS[self.task]:
            raise TunelabError(f"unknown mode '{self.mode}' for {self.task}; modes: {', '.join(TASKS[self.task])}")
        if self.shots < 0 or self.max_steps < 1 or self.k < 1 or (self.limit is not None and self.limit < 1):
            raise TunelabError("shots must be >= 0; max_steps, k and limit >= 1")


def load_rows(settings: AgentEvalSettings) -> list[dict[str, Any]]:
    from tunelab.data.loading import builtin_path, iter_records

    dataset = "gsm8k" if settings.task == "gsm8k" else "boolq"
    split = settings.split if dataset == "gsm8k" else "val"
    path = Path(settings.data) if settings.data else builtin_path(dataset, split)
    required = ("question", "answer") if dataset == "gsm8k" else ("question", "passage", "label")
    rows = []
    for where, row in iter_records(path):
        missing = [f for f in required if f not in row]
        if missing:
            raise TunelabError(f"{where}: a {settings.task} row needs {', '.join(required)} (missing {', '.join(missing)})")
        if dataset == "gsm8k":
            try:
                gold_answer(row["answer"])
            except ValueError as error:
                raise TunelabError(f"{where}: {error}") from None
        rows.append(row)
        if settings.limit and len(rows) == settings.limit:
            break
    return rows


# --- GSM8K ------------------------------------------------------------------------------------

# The recipes gsm8k-calculator.yaml and gsm8k-no-tool.yaml train with these instructions
# (tested), so --shots 0 prompts a fine-tune exactly as it was trained.
INSTRUCTIONS = {"direct": "Answer the math problem with its final number only, as '#### <number>'.",
                "cot": "Solve the math problem step by step, then give the final number as '#### <number>'.",
                "calculator": "Solve the math problem step by step. Write each calculation as <<expression=, "
                "and the calculator completes it. End with '#### <number>'."}


BATCH_ROWS = 32  # problems per call of the batched modes (each call sorts its problems by length)


def conversation(mode: str, shots: list[dict[str, Any]], question: str) -> list[dict[str, str]]:
    """The solved examples, then the problem, each user turn starting with the mode's instruction."""
    return [*few_shot(shots, mode, INSTRUCTIONS[mode]), {"role": "user", "content": user_turn(INSTRUCTIONS[mode], question)}]


def solve(question: str, backend: Backend, settings: AgentEvalSettings) -> AgentResult:
    """One problem by ReAct (the other modes go through ``solve_batch``)."""
    result = run_react(question, make_tools(["calculator"]), backend, max_steps=settings.max_steps,
                       max_tokens=settings.max_tokens)
    result.answer = last_number(result.answer)  # "72 clips", "$72" and "1,000" read as every mode reads them
    return result


def solve_batch(questions: list[str], mode: str, backend: Backend, settings: AgentEvalSettings,
                shots: list[dict[str, Any]], loaded: Any = None,
                limits: SandboxLimits | None = None) -> list[AgentResult]:
    """The direct, cot, pal and calculator modes for many problems at once: one model reply
    each, batched where the backend can."""
    if mode == "pal":  # the programs are written together, then each runs in the sandbox
        replies = complete_many(backend, [pal_messages(q) for q in questions], settings.max_tokens)
        results = [run_program(q, reply, limits) for q, reply in zip(questions, replies)]
        for result in results:
            result.answer = last_number(result.answer)
        return results
    conversations = [conversation(mode, shots, q) for q in questions]
    if mode == "calculator":
        if loaded is None:
            raise TunelabError("mode 'calculator' runs the tool inside generation: it needs a local model")
        written = write_with_calculator(loaded, conversations, settings.max_tokens)
    else:
        written = [(text, []) for text in complete_many(backend, conversations, settings.max_tokens)]
    results = []
    for question, (text, calls) in zip(questions, written):
        answer = last_number(text)
        observation = "; ".join(f"{expression}={value}" for expression, value in calls)
        step = Step(text, tool="calculator" if calls else None,
                    arguments={"expressions": [e for e, _ in calls]} if calls else None, observation=observation)
        results.append(AgentResult(question, answer, "finish" if answer is not None else "no answer", [step]))
    return results


def write_with_calculator(loaded: Any, conversations: list[list[dict[str, str]]], max_tokens: int,
                          batch_size: int = 8) -> list[tuple[str, list[tuple[str, str]]]]:
    """Solutions in which, whenever the model opens a call and writes its '=' ('<<48/2='),
    the calculator writes the result and '>>' and the model goes on (``InlineCalculator``,
    batched). Returns each text with the calls the calculator answered."""
    from tunelab.agents.constrained import vocab_size
    from tunelab.agents.inline_calculator import InlineCalculator, barred_inside_calls
    from tunelab.generation import GenerationSettings, generate_from_ids

    tokenizer = loaded.tokenizer
    prompts = []
    for messages in conversations:
        text, has_special = render_chat(tokenizer, messages)
        prompts.append(tokenizer(text, add_special_tokens=not has_special)["input_ids"])
    barred = barred_inside_calls(tokenizer, vocab_size(loaded.model))
    calculators = [InlineCalculator(tokenizer, barred) for _ in prompts]
    settings = GenerationSettings(max_new_tokens=max_tokens, batch_size=batch_size)
    generated = generate_from_ids(loaded.model, tokenizer, prompts, settings, progress=False, constraints=calculators)
    return [(tokenizer.decode(g.token_ids, skip_special_tokens=True), c.calls) for g, c in zip(generated, calculators)]


def score_gsm8k(rows: list[dict[str, Any]], results: list[AgentResult], mode: str, bootstrap: int,
                seed: int) -> dict[str, Any]:
    from tunelab.evaluation.choice_metrics import bootstrap_interval

    import numpy as np

    correct = np.array([same_number(r.answer, gold_answer(row["answer"])) for row, r in zip(rows, results)], dtype=float)
    outcomes = Counter(outcome(r, bool(c)) for r, c in zip(results, correct))
    n = len(rows)
    steps = [s for r in results for s in r.steps]
    metrics = {"n": n, "accuracy": float(correct.mean()) if n else 0.0,
               "parse_rate": 1 - sum(s.error == "parse" for s in steps) / max(len(steps), 1),
               "tool_calls_per_problem": sum(r.tool_calls for r in results) / max(n, 1) if mode != "calculator"
               else sum(len((s.arguments or {}).get("expressions", ())) for s in steps) / max(n, 1),
               "outcomes": {k: v / max(n, 1) for k, v in sorted(outcomes.items())}}
    if bootstrap and n:
        metrics["accuracy_ci"] = bootstrap_interval(lambda i: float(correct[i].mean()), n, bootstrap, seed)
    return metrics


def outcome(result: AgentResult, correct: bool) -> str:
    """Why a run ended as it did: right, or the first kind of failure."""
    if correct:
        return "right"
    for kind in ("parse", "length", "tool", "arguments", "unknown tool"):
        if any(s.error == kind for s in result.steps):
            return {"tool": "tool error"}.get(kind, kind)
    if result.stop_reason == "step limit":
        return "step limit"
    return "wrong answer" if result.answer is not None else "no answer"


def run_gsm8k(rows: list[dict[str, Any]], settings: AgentEvalSettings, backend: Backend, loaded: Any = None,
              progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tunelab.data.loading import builtin_path, iter_records

    shots = [row for _, row in zip(range(settings.shots), (r for _, r in iter_records(builtin_path("gsm8k", "train"))))]
    if settings.mode != "react":  # one reply each: batched where the backend can
        results = []
        for start in range(0, len(rows), BATCH_ROWS):  # in slices, so the progress bar moves
            chunk = [row["question"] for row in rows[start:start + BATCH_ROWS]]
            results += solve_batch(chunk, settings.mode, backend, settings, shots, loaded)
            if progress:
                progress(len(chunk))
    else:
        results = []
        for row in rows:
            results.append(solve(row["question"], backend, settings))
            if progress:
                progress(1)
    traces = [{**r.to_json(), "gold": gold_answer(row["answer"]), "correct": same_number(r.answer, gold_answer(row["answer"]))}
              for row, r in zip(rows, results)]
    return score_gsm8k(rows, results, settings.mode, settings.bootstrap, settings.seed), traces


# --- BoolQ with retrieval ---------------------------------------------------------------------

def file_passages(path: str) -> list[Any]:
    """Every distinct passage of a BoolQ-shaped file (all of it, whatever --limit says)."""
    from tunelab.agents.search import Passage
    from tunelab.data.loading import iter_records

    seen: dict[str, Any] = {}
    for where, row in iter_records(Path(path)):
        seen.setdefault(row["passage"], Passage(where, row["passage"]))
    return list(seen.values())


def run_boolq_rag(rows: list[dict[str, Any]], settings: AgentEvalSettings, loaded: Any,
                  progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import numpy as np

    from tunelab.agents.search import SearchIndex, boolq_passages
    from tunelab.evaluation.choice_metrics import bootstrap_interval
    from tunelab.evaluation.loglik import score_items
    from tunelab.evaluation.scenarios import choice_item

    corpus = boolq_passages() if not settings.data else file_passages(settings.data)
    index = SearchIndex(corpus) if settings.mode == "bm25" else None
    items, traces = [], []
    for n, row in enumerate(rows):
        question = row["question"].rstrip("?") + "?"
        passages = [] if settings.mode == "closed" else [row["passage"]] if settings.mode == "gold" else \
            [hit.text for hit in index.search(question, settings.k)]
        items.append(choice_item(f"boolq:{n}", boolq_context(passages, question), ["no", "yes"], int(bool(row["label"]))))
        traces.append({"question": question, "passages": passages, "gold_retrieved": row["passage"] in passages})
    # Contextual calibration (Zhao et al., 2021): the same prompt with every passage and the
    # question replaced by "N/A" measures the model's prior for "no" over "yes"; subtracted,
    # it leaves what the passages and the question changed. No label is used.
    slots = {"closed": 0, "gold": 1, "bm25": settings.k}[settings.mode]
    content_free = choice_item("boolq:n/a", boolq_context(["N/A"] * slots, "N/A"), ["no", "yes"], 0)
    scores, _ = score_items(loaded.model, loaded.tokenizer, [*items, content_free], batch_size=4, progress=progress)
    prior = np.array(scores.pop())
    chosen = [int(np.argmax(s)) for s in scores]
    chosen_calibrated = [int(np.argmax(np.array(s) - prior)) for s in scores]
    correct = np.array([c == item.gold[0] for c, item in zip(chosen, items)], dtype=float)
    calibrated = np.array([c == item.gold[0] for c, item in zip(chosen_calibrated, items)], dtype=float)
    for trace, s, c, cc, right, right_calibrated in zip(traces, scores, chosen, chosen_calibrated, correct, calibrated):
        trace.update(logprobs=s, answer=["no", "yes"][c], correct=bool(right),
                     calibrated_answer=["no", "yes"][cc], calibrated_correct=bool(right_calibrated))
    metrics = {"n": len(rows), "accuracy": float(correct.mean()), "calibrated_accuracy": float(calibrated.mean()),
               "content_free_logprobs": prior.tolist(), "parse_rate": 1.0}
    if settings.mode == "bm25":
        metrics[f"recall_at_{settings.k}"] = sum(t["gold_retrieved"] for t in traces) / len(traces)
    if settings.bootstrap:
        metrics["accuracy_ci"] = bootstrap_interval(lambda i: float(correct[i].mean()), len(rows), settings.bootstrap,
                                                    settings.seed)
        metrics["calibrated_accuracy_ci"] = bootstrap_interval(lambda i: float(calibrated[i].mean()), len(rows),
                                                               settings.bootstrap, settings.seed)
    return metrics, traces


def boolq_context(passages: list[str], question: str) -> str:
    """lm-eval's BoolQ prompt, with any number of passages before the question."""
    return "".join(f"{p}\n\n" for p in passages) + f"Question: {question}\nAnswer:"
