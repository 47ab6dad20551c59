import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelab.errors import DataError
from tunelab.evaluation import score
from tunelab.evaluation.metrics import split_sentences
from tunelab.evaluation.report import markdown_table, read_predictions, score_files

PREDICTIONS = [
    "Person1 and Person2 talk about the weather. They decide to stay home.",
    "The man buys a train ticket to Paris for fifty dollars.",
    "A woman asks for directions to the bank.",
]
REFERENCES = [
    ["#Person1# and #Person2# discuss the rainy weather and stay at home.", "They talk about rain. They stay in."],
    ["#Person1# buys a ticket to Paris.", "A man pays 50 dollars for a ticket to Paris.", "Person1 gets a ticket."],
    ["#Person2# tells #Person1# the way to the bank."],
]


def _direct_rouge(pairs):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    return [scorer.score(split_sentences(ref), split_sentences(pred)) for pred, ref in pairs]


def test_rouge_mean_over_pairs_matches_rouge_score():
    result = score(PREDICTIONS, REFERENCES)
    pairs = [(p, r) for p, refs in zip(PREDICTIONS, REFERENCES) for r in refs]
    direct = _direct_rouge(pairs)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert result[key] == pytest.approx(sum(s[key].fmeasure for s in direct) / len(direct))
    assert result["n"] == 3 and 0 < result["rouge1"] < 1


def test_rouge_max_takes_the_best_reference():
    result = score(PREDICTIONS, REFERENCES, multi_ref="max")
    best = [max(s["rouge1"].fmeasure for s in _direct_rouge([(p, r) for r in refs])) for p, refs in zip(PREDICTIONS, REFERENCES)]
    assert result["rouge1"] == pytest.approx(sum(best) / len(best))
    assert result["rouge1"] >= score(PREDICTIONS, REFERENCES)["rouge1"]


def test_rouge_lsum_splits_sentences():
    # Lsum scores sentence by sentence; on multi-sentence texts it differs from L.
    pred = "They stay home. It rains outside."
    ref = "It rains outside. They stay home."
    result = score([pred], [[ref]])
    assert result["rougeLsum"] == pytest.approx(1.0) and result["rougeL"] < 1.0


def test_bleu_and_chrf_match_sacrebleu_with_ragged_references():
    result = score(PREDICTIONS, REFERENCES)
    streams = [[refs[i] if i < len(refs) else None for refs in REFERENCES] for i in range(3)]
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, streams).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, streams).score)
    # Independent check of the holes: filling each with a copy of one of that row's
    # references must change nothing (BLEU clips by the best reference, chrF takes it).
    filled = [refs + [refs[0]] * (3 - len(refs)) for refs in REFERENCES]
    assert result["bleu"] == pytest.approx(score(PREDICTIONS, filled)["bleu"])
    assert result["chrf"] == pytest.approx(score(PREDICTIONS, filled)["chrf"])
    single = score(PREDICTIONS, [r[:1] for r in REFERENCES])
    assert single["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [[r[0] for r in REFERENCES]]).score)
    assert result["bleu"] > 0


def test_perfect_predictions_score_full_marks():
    refs = [[r[0]] for r in REFERENCES]
    result = score([r[0] for r in refs], refs)
    assert result["rouge1"] == pytest.approx(1.0) and result["bleu"] == pytest.approx(100.0)


def _write_preds(path, predictions, references):
    path.write_text("".join(json.dumps({"id": str(i), "prediction": p, "references": r}) + "\n" for i, (p, r) in enumerate(zip(predictions, references))))
    return path


def test_comparison_table_and_json(tmp_path):
    a = _write_preds(tmp_path / "zero-shot.jsonl", PREDICTIONS, REFERENCES)
    b = _write_preds(tmp_path / "human.jsonl", [r[0] for r in REFERENCES], REFERENCES)
    results = score_files([a, b])
    assert list(results) == ["zero-shot", "human"]
    assert set(results["human"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "n"}
    table = markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == "| run | n | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | BLEU | chrF |"
    assert lines[2].startswith("| zero-shot | 3 | ") and f"{results['zero-shot']['rouge1'] * 100:.2f}" in lines[2]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"id": "1", "references": ["x"]}, r"p.jsonl:2: expected a string field 'prediction'"),
        ({"id": "1", "prediction": "a", "references": []}, r"p.jsonl:2: expected 'references' as a non-empty list"),
        ({"id": "1", "prediction": "a", "references": [""]}, r"p.jsonl:2: expected 'references'"),
    ],
)
def test_bad_prediction_rows(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prediction": "ok", "references": ["ok"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        read_predictions(path)


def test_missing_predictions_file(tmp_path):
    with pytest.raises(DataError, match="no such predictions file"):
        read_predictions(tmp_path / "nope.jsonl")


def test_empty_prediction_is_scored_as_zero(tmp_path):
    path = _write_preds(tmp_path / "p.jsonl", [""], [["a reference"]])
    assert score_files([path])["p"]["rouge1"] == 0.0


def test_distinct_n_by_hand():
    from tunelab.evaluation import distinct_n

    # bigrams: (a b) (b a) (a b) | (a b) -> 2 unique of 4
    assert distinct_n(["a b a b", "A b"], 2) == 0.5
    assert distinct_n(["one two three"], 1) == 1.0
    assert distinct_n(["same"] * 3, 1) == pytest.approx(1 / 3)
    assert distinct_n(["", "x"], 2) == 0.0  # no bigram at all
