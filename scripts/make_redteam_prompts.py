"""Build Lab B's prompts: the first human turn of the shipped hh-rlhf harmless-base pairs
(red-teaming requests written to draw a harmful answer).

    python scripts/make_redteam_prompts.py      # writes src/tunelab/data/builtin/hh_rlhf/prompts.*.jsonl

The rule: each transcript's first "Human:" turn, whitespace-trimmed; duplicates within a
split are kept once (several pairs share an opening). Training prompts come from the train
split, held-out ones from the test split; a training prompt equal (ignoring case) to a
held-out one is dropped, so no held-out prompt is ever trained on. Each row also keeps
the turn in hh-rlhf's own transcript form ("transcript"), which is what the hh-rlhf
reward model was trained to read.
"""

import gzip
import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "src/tunelab/data/builtin/hh_rlhf"
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def first_turns(split: str) -> list[dict]:
    rows, seen = [], set()
    with gzip.open(FOLDER / f"{split}.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            chosen = json.loads(text)["chosen"]
            start = chosen.find(HUMAN)
            end = chosen.find(ASSISTANT, start)
            if start < 0 or end < 0:
                continue
            turn = chosen[start + len(HUMAN):end].strip()
            if not turn or turn.lower() in seen:
                continue
            seen.add(turn.lower())
            rows.append({"id": f"hh-{split}-{line}", "prompt": turn})
    return rows


def main() -> None:
    test = first_turns("test")
    held_out = {r["prompt"].lower() for r in test}
    train = [r for r in first_turns("train") if r["prompt"].lower() not in held_out]
    for split, rows in (("train", train), ("test", test)):
        path = FOLDER / f"prompts.{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
