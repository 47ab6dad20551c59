"""GSM8K answers and traces, the modes of `tunelab agent eval` driven by a scripted
backend, the calculator inserted into generation, and BoolQ with retrieval."""

import json
import pytest
import torch
from tunelab.agents.backends import ScriptedBackend
from tunelab.agents.gsm8k import gold_answer, last_number, same_number, trace_segments, without_calls
from tunelab.agents.inline_calculator import InlineCalculator, barred_inside_calls
from tunelab.agents.tasks import AgentEvalSettings, load_rows, run_boolq_rag, run_gsm8k
from tunelab.errors import TunelabError

SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"
ROWS = [{"question": "How many clips?", "answer": SOLUTION}, {"question": "How much?", "answer": "x\n#### 1,000"}]


def test_answers_and_numbers():
    assert gold_answer(SOLUTION) == "72" and gold_answer("#### 1,000") == "1000"
    assert last_number("So she has $1,250.50 left.") == "1250.50" and last_number("#### 18\nThanks, 3 more") == "18"
    assert last_number("no number") is None and last_number("It is 7.") == "7"
    assert same_number("18.00", "18") and not same_number("18.5", "18") and not same_number(None, "1")


def test_training_traces_leave_tool_output_to_the_tool():
    segments = trace_segments(SOLUTION)
    assert "".join(text for text, _ in segments) == SOLUTION
    assert [text for text, by_model in segments if not by_model] == ["24>>", "72>>"]
    assert segments[0] == ("Natalia sold 48/2 = <<48/2=", True)
    assert without_calls(SOLUTION).startswith("Natalia sold 48/2 = 24 clips")


@pytest.mark.parametrize("mode, replies, expected", [
    ("direct", ["#### 72", "#### 999"], [True, False]),
    ("cot", ["48/2 = 24, 48+24 = 72\n#### 72", "It is 1000 dollars.\n#### 1000"], [True, True]),
    ("pal", ["```python\nprint(48 + 48 // 2, 'clips')\n```", "```python\nprint('$1,000')\n```"], [True, True]),
    ("react", [json.dumps({"thought": "add", "tool": "calculator", "arguments": {"expression": "48+24"}}),
               json.dumps({"thought": "done", "tool": "finish", "arguments": {"answer": "72 clips"}}),
               "garbage", "garbage"], [True, False]),
])
def test_gsm8k_modes(mode, replies, expected):
    settings = AgentEvalSettings(mode=mode, max_steps=2, shots=1, bootstrap=50)
    settings.validate()
    metrics, traces = run_gsm8k(ROWS, settings, ScriptedBackend(list(replies)))
    assert [t["correct"] for t in traces] == expected
    assert metrics["n"] == 2 and metrics["accuracy"] == sum(expected) / 2 and "accuracy_ci" in metrics
    if mode == "react":
        assert metrics["parse_rate"] == 0.5 and metrics["tool_calls_per_problem"] == 0.5
        assert metrics["outcomes"] == {"parse": 0.5, "right": 0.5}


class ByteTokenizer:
    """A tokenizer whose tokens are bytes, for scripting a model's output."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(text.encode())}

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode(errors="replace")

    def batch_decode(self, sequences):
        return [self.decode(ids) for ids in sequences]

    def __len__(self):
        return 256


def feed(calculator, text):
    for token in text.encode():
        calculator.consume(token)


def test_the_calculator_answers_the_call_the_model_opened():
    tokenizer = ByteTokenizer()
    calculator = InlineCalculator(tokenizer, barred_inside_calls(tokenizer, 256))
    feed(calculator, "Natalia sold 48/2 = <<48/2")
    assert calculator.call_open and not calculator.forced
    logits = torch.zeros(256)
    calculator.mask_(logits)
    assert torch.isinf(logits).sum() == 0  # this tokenizer has no token holding '=' and more
    feed(calculator, "=")
    assert calculator.forced == list(b"24>>") and calculator.calls == [("48/2", "24")]
    calculator.mask_(logits)
    assert torch.isfinite(logits).nonzero().flatten().tolist() == [ord("2")]  # the result is forced
    feed(calculator, "24>>24 clips. Then <<1/0=")
    assert calculator.forced == list(b"?>>")
    assert calculator.calls == [("48/2", "24"), ("1/0", "?")]  # the model goes on without a value


def test_tokens_with_text_after_equals_are_barred_inside_a_call():
    class Merged(ByteTokenizer):  # token 256 is "=2", 257 is "==", 258 is "+="
        extra = {256: "=2", 257: "==", 258: "+="}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.extra.get(i) or bytes([i]).decode(errors="replace") for i in ids)

        def __len__(self):
            return 259

    tokenizer = Merged()
    calculator = InlineCalculator(tokenizer, barred_inside_calls(tokenizer, 259))
    logits = torch.zeros(259)
    calculator.mask_(logits)
    assert torch.isfinite(logits).all()  # outside a call, anything goes
    feed(calculator, "<<3+4")
    calculator.mask_(logits)
    assert torch.isinf(logits).nonzero().flatten().tolist() == [256, 257]  # '+=' ends with the one '='


def test_forced_text_is_exact_after_other_text(agent_t5_dir):
    from transformers import AutoTokenizer

    from tunelab.agents.inline_calculator import continuation_ids

    for tokenizer in (AutoTokenizer.from_pretrained(agent_t5_dir), ByteTokenizer()):
        for text in ("24>>", "0.3333333333>>", "?>>"):
            assert tokenizer.decode(continuation_ids(tokenizer, text), skip_special_tokens=True) == text


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_the_calculator_writes_inside_batched_generation(arch, agent_llama_dir, agent_t5_dir):
    from tunelab.agents.constrained import vocab_size
    from tunelab.generation import GenerationSettings, generate_from_ids
    from tunelab.models import load_model

    loaded = load_model(str(agent_llama_dir if arch == "llama" else agent_t5_dir), device="cpu")
    tokenizer = loaded.tokenizer
    mask = barred_inside_calls(tokenizer, vocab_size(loaded.model))
    starts = ["<<6*7=", "So <<48/2=", "no call"]
    calculators = [InlineCalculator(tokenizer, mask, prefix=start) for start in starts]
    prompts = [tokenizer("Solve it.", add_special_tokens=False)["input_ids"]] * 3
    generated = generate_from_ids(loaded.model, tokenizer, prompts, GenerationSettings(max_new_tokens=24, batch_size=3),
                                  progress=False, constraints=calculators)
    texts = [tokenizer.decode(g.token_ids, skip_special_tokens=True) for g in generated]
    assert texts[0].startswith("<<6*7=42>>") and calculators[0].calls[0] == ("6*7", "42")
    assert texts[1].startswith("So <<48/2=24>>") and calculators[1].calls[0] == ("48/2", "24")
    assert all(e + "=" + v + ">>" in t for c, t in zip(calculators, texts) for e, v in c.calls)


def test_calculator_mode_end_to_end(agent_t5_dir):
    from tunelab.models import load_model

    settings = AgentEvalSettings(mode="calculator", shots=1, max_tokens=12, bootstrap=0)
    settings.validate()
    metrics, traces = run_gsm8k(ROWS, settings, backend=None, loaded=load_model(str(agent_t5_dir), device="cpu"))
    assert metrics["n"] == 2 and len(traces) == 2 and metrics["outcomes"]
    calls = [len((t["steps"][0]["arguments"] or {}).get("expressions", ())) for t in traces]
    assert metrics["tool_calls_per_problem"] == sum(calls) / 2
    with pytest.raises(TunelabError, match="needs a local model"):
        run_gsm8k(ROWS, settings, ScriptedBackend(["#### 72"]))


def test_rows_and_settings_errors(tmp_path):
    assert len(load_rows(AgentEvalSettings(task="gsm8k", split="dev", limit=3))) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no final number"}\n')
    with pytest.raises(TunelabError, match=r"bad.jsonl:1: a GSM8K solution ends in"):
        load_rows(AgentEvalSettings(data=str(bad)))
    with pytest.raises(TunelabError, match="unknown mode 'pal' for boolq-rag; modes: bm25, closed, gold"):
        AgentEvalSettings(task="boolq-rag", mode="pal").validate()


@pytest.mark.parametrize("mode", ["closed", "bm25", "gold"])
def test_boolq_with_retrieval(agent_llama_dir, mode):
    from tunelab.models import load_model

    loaded = load_model(str(agent_llama_dir), device="cpu")
    settings = AgentEvalSettings(task="boolq-rag", mode=mode, limit=4, k=2, bootstrap=0)
    rows = load_rows(settings)
    metrics, traces = run_boolq_rag(rows, settings, loaded)
    assert metrics["n"] == 4 and 0 <= metrics["accuracy"] <= 1 and len(traces) == 4
    assert all(len(t["passages"]) == {"closed": 0, "bm25": 2, "gold": 1}[mode] for t in traces)
    assert 0 <= metrics["calibrated_accuracy"] <= 1 and len(metrics["content_free_logprobs"]) == 2
    prior = metrics["content_free_logprobs"]
    assert all(t["calibrated_answer"] == ["no", "yes"][t["logprobs"][1] - prior[1] > t["logprobs"][0] - prior[0]]
               for t in traces)
    if mode == "bm25":
        assert 0 <= metrics["recall_at_2"] <= 1
    if mode == "gold":
        assert all(t["gold_retrieved"] for t in traces)


def test_cli_eval_writes_metrics_and_traces(tmp_path, agent_llama_dir):
    from tunelab.cli import main

    out = tmp_path / "eval"
    assert main(["agent", "eval", "--task", "gsm8k", "--mode", "direct", "--split", "dev", "--limit", "2",
                 "--max-tokens", "8", "--model", str(agent_llama_dir), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and {"accuracy", "parse_rate", "accuracy_ci", "outcomes"} <= set(metrics)
    assert len((out / "traces.jsonl").read_text().splitlines()) == 2


def test_cli_run_prints_the_trace(tmp_path, agent_llama_dir, capsys):
    from tunelab.cli import main

    code = main(["agent", "run", "What is 2 + 2?", "--model", str(agent_llama_dir), "--max-steps", "1",
                 "--max-tokens", "2600", "--out", str(tmp_path / "trace.json")])
    out = capsys.readouterr().out
    assert code in (0, 1) and "Action 1: " in out and "Answer: " in out  # a random model, but a valid step
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert trace["parse_failures"] == 0 and len(trace["steps"]) == 1


def test_batched_replies_equal_one_at_a_time(agent_llama_dir):
    from tunelab.agents.backends import LocalBackend
    from tunelab.models import load_model

    backend = LocalBackend(load_model(str(agent_llama_dir), device="cpu"), batch_size=3)
    conversations = [[{"role": "user", "content": q}] for q in ("What is 2+2?", "Hello there", "Where is the bank? " * 3)]
    assert backend.complete_batch(conversations, max_tokens=6) == [backend.complete(c, max_tokens=6) for c in conversations]
