"""Build Lab A's prompts: the first 4-8 words of SST-2 sentences (TRL's "make GPT-2 write
positive reviews" set-up, on the shipped SST-2 files).

    python scripts/make_sst2_prefixes.py        # writes src/tunelab/data/builtin/sst2/prefixes.*.jsonl

The rule: sentences of at least 10 words (the training slice also holds short phrases);
each keeps its first k words, k drawn from 4-8 by a generator seeded with 0, so the files
are the same on every run. Training prompts come from the training slice, held-out ones
from the test split; a training prefix that equals a held-out one is dropped, so no
held-out prompt is ever trained on. Each row keeps its sentence and its label (as "sentiment": no reference for ROUGE).
"""

import csv
import json
import random
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "src/tunelab/data/builtin/sst2"


def prefixes(split: str, rng: random.Random) -> list[dict]:
    rows = []
    with open(FOLDER / f"{split}.tsv", encoding="utf-8", newline="") as handle:
        for line, record in enumerate(csv.DictReader(handle, delimiter="\t"), start=2):
            words = record["sentence"].split()
            if len(words) < 10:
                continue
            k = rng.randint(4, 8)
            rows.append({"id": f"sst2-{split}-{line}", "prompt": " ".join(words[:k]),
                         "sentence": record["sentence"].strip(), "sentiment": int(record["label"])})
    return rows


def main() -> None:
    rng = random.Random(0)
    test = prefixes("test", rng)
    held_out = {r["prompt"].lower() for r in test}
    train = [r for r in prefixes("train", rng) if r["prompt"].lower() not in held_out]
    for split, rows in (("train", train), ("test", test)):
        path = FOLDER / f"prefixes.{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
