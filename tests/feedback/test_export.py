"""prepare -> label -> export -> reward training, through the CLI, on a tiny model."""

import json

from tests.feedback.conftest import PROMPTS
from tunelab.alignment.preferences import load_pairs
from tunelab.alignment.reward import RewardTrainer
from tunelab.cli import main
from tunelab.feedback.store import LabelStore
from tunelab.recipe import TrainConfig


def test_prepare_generates_k_completions(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, (p, _) in enumerate(PROMPTS)))
    db = tmp_path / "labels.sqlite"
    assert main(["label", "prepare", "--db", str(db), "--prompts", str(prompts), "--model", str(tiny_model_dir),
                 "--k", "3", "--max-new-tokens", "8", "--criterion", "Which is most polite?", "--labels-per-prompt", "2",
                 "--no-progress"]) == 0
    assert "added 3 prompts" in capsys.readouterr().out
    store = LabelStore(db)
    assert store.settings() == {"criterion": "Which is most polite?", "labels_per_prompt": "2"}
    prompt = store.prompt(1)
    assert prompt["source_id"] == "p0" and len(prompt["completions"]) == 3
    origin = json.loads(store.db.execute("SELECT origin FROM prompts WHERE id = 1").fetchone()[0])
    assert origin["k"] == 3 and origin["generation"]["do_sample"] and origin["generation"]["max_new_tokens"] == 8


def test_bad_prompt_rows_name_the_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    assert main(["label", "prepare", "--db", str(tmp_path / "x.sqlite"), "--prompts", str(prompts), "--model", "m"]) == 2
    assert "prompts.jsonl:2" in capsys.readouterr().err
    completions = tmp_path / "completions.jsonl"
    completions.write_text('{"prompt": "ok", "completions": ["only one"]}\n')
    assert main(["label", "prepare", "--db", str(tmp_path / "x.sqlite"), "--completions", str(completions)]) == 2
    assert "completions.jsonl:1" in capsys.readouterr().err


def test_export_feeds_reward_training(tiny_llama_dir, tmp_path, capsys):
    completions = tmp_path / "completions.jsonl"
    rows = [{"prompt": f"Where should we meet, round {i}?", "completions": ["Next to the park.", "Take an umbrella then.", "Blue."]}
            for i in range(8)]
    completions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "labels.sqlite"
    assert main(["label", "prepare", "--db", str(db), "--completions", str(completions), "--labels-per-prompt", "2"]) == 0
    for name in ("ann", "bob"):
        assert main(["label", "users", "add", name, "--db", str(db)]) == 0
    token = capsys.readouterr().out.split("token ")[-1].split()[0]
    store = LabelStore(db)
    assert store.user_for_token(token).name == "bob"
    for user in store.users():
        while (prompt := store.next_prompt(user)) is not None:
            # both prefer the park; 'Blue.' is not relevant to ann
            by_text = {c["text"]: c["id"] for c in prompt["completions"]}
            ranks = {str(by_text["Next to the park."]): 1, str(by_text["Take an umbrella then."]): 2,
                     str(by_text["Blue."]): None if user.name == "ann" else 3}
            store.submit(user, prompt["id"], ranks, f"{user.name}-{prompt['id']}-submission")
    store.close()
    pairs, rankings = tmp_path / "pairs.jsonl", tmp_path / "rankings.jsonl"
    assert main(["label", "export", "--db", str(db), "--out", str(pairs), "--rankings", str(rankings)]) == 0
    assert "16 rankings -> 32 pairs" in capsys.readouterr().out  # ann: 1 pair each, bob: 3
    loaded = load_pairs(pairs)
    assert len(loaded) == 32 and all(p.chosen != "Blue." for p in loaded)
    assert {p.chosen for p in loaded if p.rejected == "Take an umbrella then."} == {"Next to the park."}
    assert len(load_pairs(rankings)) == 32  # the rankings file is itself trainable
    assert main(["label", "status", "--db", str(db)]) == 0
    assert "agreement 1.000" in capsys.readouterr().out
    config = TrainConfig(stage="reward", method="full", model=str(tiny_llama_dir), data=str(pairs), split=None,
                         eval_data=str(pairs), eval_split=None, max_steps=20, batch_size=4, learning_rate=2e-3,
                         warmup_ratio=0.0, max_length=64, output_dir=str(tmp_path / "reward"), seed=0)
    result = RewardTrainer(config, progress=False).train()
    assert result.summary["eval_accuracy"] == 1.0
