"""Perturbations are seeded and deterministic, and change what they say they change."""

import random

from tunelab.evaluation.perturbations import PERTURBATIONS, contractions, gender, lowercase, names, perturb_row, typos, whitespace

TEXT = "He said that Emily did not know his brother, and it is raining in the old town square today."


def test_each_perturbation_is_deterministic_per_item():
    row = {"sentence": TEXT, "label": 1}
    for name in PERTURBATIONS:
        a, b = perturb_row(row, ("sentence",), name, "x:1"), perturb_row(row, ("sentence",), name, "x:1")
        assert a == b and a["label"] == 1, name
    different = {perturb_row(row, ("sentence",), "typos", f"x:{i}")["sentence"] for i in range(20)}
    assert len(different) > 1  # the seed includes the item


def test_what_each_one_changes():
    rng = random.Random(0)
    typo = typos(TEXT, random.Random(3), rate=0.5)
    assert len(typo) == len(TEXT) and typo != TEXT
    assert sum(a != b for a, b in zip(typo, TEXT)) <= len(TEXT.split())  # at most one letter per word
    assert all(not (a.isalpha() ^ b.isalpha()) for a, b in zip(typo, TEXT))
    assert lowercase(TEXT, rng) == TEXT.lower()
    spaced = whitespace(TEXT, rng)
    assert spaced.split() == TEXT.split() and len(spaced) > len(TEXT)
    assert contractions(TEXT, rng) == TEXT.replace("did not", "didn't").replace("it is", "it's")
    assert contractions("I don't know, it's late", rng) == "I do not know, it is late"
    assert gender(TEXT, rng) == "She said that Emily did not know her sister, and it is raining in the old town square today."
    assert gender("She thanked her", rng) == "He thanked his"
    assert names(TEXT, rng) == TEXT.replace("Emily", "Lakisha") and names("Lakisha and Jamal", rng) == "Emily and Greg"
    assert names("Emilyn", rng) == "Emilyn"  # whole words only
    assert names("anne with an e", rng) == "ebony with an e" and names("Kenya", rng) == "Kenya"


def test_fairness_swaps_follow_into_the_answers():
    from tunelab.evaluation.scenarios import scenario

    spec = scenario("bbq")
    rows = spec.rows_by_id()
    gendered = [(i, r) for i, r in rows.items() if " man " in f" {r['context']} " and " man" in r[f"ans{r['label']}"]]
    item_id, row = gendered[0]
    swapped = spec.build(perturb_row(row, spec.text_fields, "gender", item_id, answers=spec.answer_fields), item_id, "tunelab")
    assert "woman" in swapped.context and "woman" in swapped.options[row["label"]]  # the right answer still matches
    kept = spec.build(perturb_row(row, spec.text_fields, "typos", item_id, answers=spec.answer_fields), item_id, "tunelab")
    assert kept.options == spec.build(row, item_id, "tunelab").options  # robustness leaves answers alone
