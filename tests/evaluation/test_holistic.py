"""The holistic report end to end on tiny models: files, metrics, the cache, the fast
subset, the chat template and the CLI."""

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.holistic import ModelSpec, evaluate_models, model_specs
from tunelab.evaluation.scoring import in_chat, stratified_subset
from tunelab.evaluation.scenarios import scenario
from tunelab.evaluation.settings import EvalSettings
from tunelab.models import load_for_inference

SETTINGS = dict(scenarios=("cb", "bbq", "truthfulqa_mc2"), limit=6, bootstrap=50)


def loader(calls):
    def load(spec):
        calls.append(spec.label)
        return load_for_inference(spec.model, spec.adapter, device="cpu")
    return load


def test_report_files_and_metrics(tmp_path, tiny_model_dir):
    calls = []
    report = evaluate_models([ModelSpec("tiny", str(tiny_model_dir))], EvalSettings(**SETTINGS), tmp_path,
                             loader(calls), progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(report)) and set(saved["models"]["tiny"]) == {"cb", "bbq", "truthfulqa_mc2"}
    cb = saved["models"]["tiny"]["cb"]
    for key in ("n", "acc", "acc_norm", "acc_mi", "ece_10", "ece_1", "brier", "selective_acc_10", "robustness",
                "fairness", "acc_typos", "acc_names", "seconds_per_item", "tokens_per_second", "peak_memory_gb"):
        assert key in cb, key
    assert cb["n"] == 6 and 0 <= cb["acc"] <= 1 and cb["acc_ci"][0] <= cb["acc"] <= cb["acc_ci"][1]
    assert cb["robustness"] <= min(cb["acc"], cb["acc_typos"], cb["acc_lowercase"])  # the worst case
    assert {"acc_ambig", "bias_ambig"} <= set(saved["models"]["tiny"]["bbq"])
    assert saved["models"]["tiny"]["truthfulqa_mc2"]["mc2"] == saved["models"]["tiny"]["truthfulqa_mc2"]["acc"]
    items = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(items) == 18 and {i["scenario"] for i in items} == {"cb", "bbq", "truthfulqa_mc2"}
    first = items[0]
    assert first["model"] == "tiny" and len(first["probabilities"]) == len(first["logprobs"])
    assert sum(first["probabilities"]) == pytest.approx(1) and first["correct"] == (first["pred"] in first["gold"])
    assert sum(i["correct"] for i in items if i["scenario"] == "cb") / 6 == cb["acc"]
    assert "### cb" in (tmp_path / "report.md").read_text() and calls == ["tiny"]


def test_a_cached_model_is_not_scored_again(tmp_path, tiny_llama_dir, tiny_t5_dir, monkeypatch):
    calls = []
    settings = EvalSettings(scenarios=("copa",), limit=4, bootstrap=0, perturb=False)
    first = evaluate_models([ModelSpec("llama", str(tiny_llama_dir))], settings, tmp_path, loader(calls), progress=False)
    both = evaluate_models([ModelSpec("llama", str(tiny_llama_dir)), ModelSpec("t5", str(tiny_t5_dir))], settings,
                           tmp_path, loader(calls), progress=False)
    assert calls == ["llama", "t5"]  # the second report loaded only the new model
    assert both["models"]["llama"] == first["models"]["llama"]
    resampled = EvalSettings(scenarios=("copa",), limit=4, bootstrap=20, perturb=False)
    again = evaluate_models([ModelSpec("llama", str(tiny_llama_dir))], resampled, tmp_path, loader(calls), progress=False)
    assert calls == ["llama", "t5"]  # raw scores are cached: intervals come from them, no model needed
    assert again["models"]["llama"]["copa"]["acc"] == first["models"]["llama"]["copa"]["acc"]
    assert "acc_ci" in again["models"]["llama"]["copa"] and "acc_ci" not in first["models"]["llama"]["copa"]
    changed = EvalSettings(scenarios=("copa",), limit=4, bootstrap=0, perturb=False, format="lm-eval")
    evaluate_models([ModelSpec("llama", str(tiny_llama_dir))], changed, tmp_path, loader(calls), progress=False)
    assert calls == ["llama", "t5", "llama"]  # other prompts, another cache entry


def test_scored_scenario_round_trips_through_json(tiny_llama_dir):
    from tunelab.evaluation.scoring import ScoredScenario, score_scenario
    from tunelab.models import load_for_inference

    loaded = load_for_inference(str(tiny_llama_dir), device="cpu")
    settings = EvalSettings(scenarios=("copa",), limit=3, bootstrap=0)
    scored = score_scenario(loaded.model, loaded.tokenizer, scenario("copa"), settings)
    assert len(scored.records) == 3 and set(scored.perturbed) >= {"typos", "gender"} and scored.tokens > 0
    assert ScoredScenario.from_json(json.loads(json.dumps(scored.to_json()))) == scored


def test_fast_mode_subset_is_stratified_and_fixed():
    items = scenario("bbq").items()
    subset = stratified_subset(items, 100, seed=0)
    assert len(subset) == 100 and subset == stratified_subset(items, 100, seed=0)
    assert stratified_subset(items, 100, seed=1) != subset
    by_category = {}
    for item in subset:
        by_category[item.meta["category"]] = by_category.get(item.meta["category"], 0) + 1
    assert set(by_category) == {i.meta["category"] for i in items} and max(by_category.values()) - min(by_category.values()) <= 2
    assert abs(sum(i.meta["ambiguous"] for i in subset) - 50) <= 2


def test_chat_template_wraps_the_context(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    item = scenario("cb").items(limit=1)[0]
    wrapped = in_chat([item], tokenizer)[0]
    assert item.context in wrapped.context and wrapped.context != item.context
    assert wrapped.options == ("True", "False", "Neither") and wrapped.gold == item.gold


def test_model_specs_and_settings_errors(tmp_path):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    specs = model_specs(["base", str(adapter), "some/model"], "smollm2-135m-instruct")
    assert [(s.model, s.adapter) for s in specs] == [("smollm2-135m-instruct", None),
                                                     ("smollm2-135m-instruct", str(adapter)), ("some/model", None)]
    labelled = model_specs(["tuned=" + str(adapter), "plain=base"], "smollm2-135m-instruct")
    assert [(s.label, s.model, s.adapter) for s in labelled] == [
        ("tuned", "smollm2-135m-instruct", str(adapter)), ("plain", "smollm2-135m-instruct", None)]
    with pytest.raises(TunelabError, match="named twice"):
        model_specs(["base", "base"], "m")
    with pytest.raises(TunelabError, match="unknown scenario 'glue'"):
        EvalSettings(scenarios=("glue",)).validate()


def test_cli_writes_the_report(tmp_path, tiny_llama_dir, capsys):
    from tunelab.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--models", str(tiny_llama_dir), "--scenarios", "copa,rte", "--limit", "3",
                 "--no-perturb", "--bootstrap", "0", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"][str(tiny_llama_dir)]) == {"copa", "rte"}
    assert results["settings"]["perturb"] is False and "| model | n | acc |" in capsys.readouterr().out


def test_dialogsum_summaries_are_scored_with_their_toxicity(tmp_path, tiny_model_dir, dialog_file, monkeypatch):
    from tunelab.data import load_examples
    from tunelab.evaluation import summarization

    # the tiny models' 256-token window holds the short test dialogues, not DialogSum's
    monkeypatch.setattr(summarization, "load_examples", lambda name, split, limit=None: load_examples(dialog_file, limit=limit))
    settings = EvalSettings(scenarios=("dialogsum", "copa"), limit=3, bootstrap=0, perturb=False,
                            toxicity="a-classifier")
    calls = []
    report = evaluate_models([ModelSpec("tiny", str(tiny_model_dir))], settings, tmp_path, loader(calls),
                             progress=False, toxicity=lambda texts: [0.9 if i == 0 else 0.1 for i in range(len(texts))])
    summary = report["models"]["tiny"]["dialogsum"]
    assert summary["n"] == 3 and 0 <= summary["rouge1"] <= 1 and summary["new_tokens_mean"] > 0
    assert summary["toxicity"] == pytest.approx((0.9 + 0.1 + 0.1) / 3) and summary["toxic_share"] == pytest.approx(1 / 3)
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    generated = [r for r in rows if r["scenario"] == "dialogsum"]
    assert len(generated) == 3 and generated[0]["toxicity"] == 0.9 and generated[0]["model"] == "tiny"
    assert "ROUGE-1" in (tmp_path / "report.md").read_text()
    retoxed = evaluate_models([ModelSpec("tiny", str(tiny_model_dir))], settings, tmp_path, loader(calls),
                              progress=False, toxicity=lambda texts: [0.2] * len(texts))
    assert calls == ["tiny"] and retoxed["models"]["tiny"]["dialogsum"]["toxicity"] == pytest.approx(0.2)
    assert retoxed["models"]["tiny"]["dialogsum"]["rouge1"] == summary["rouge1"]  # the cached summaries, scored again
    with pytest.raises(TunelabError, match="no scorer"):
        evaluate_models([ModelSpec("tiny", str(tiny_model_dir))], settings, tmp_path / "again", loader(calls),
                        progress=False)
