import json
import subprocess
import sys

import pytest

from tunelab.cli import main


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from tunelab.cli import build_parser; build_parser().format_help(); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_prompt_then_eval(tiny_model_dir, dialog_file, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert main([
        "prompt", "--model", str(tiny_model_dir), "--data", str(dialog_file), "--shots", "2", "--limit", "4",
        "--max-new-tokens", "5", "--batch-size", "3", "--out", str(out), "--no-progress",
    ]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["d1", "d2", "d3", "d4"]
    for row in rows:
        assert {"id", "prompt", "prediction", "references"} <= set(row)
        assert len(row["shot_ids"]) == 2 and row["id"] not in row["shot_ids"]
        assert row["prompt"].count("Summarize the following conversation.") == 3
        assert row["new_tokens"] <= 5
    metrics = tmp_path / "metrics.json"
    table = tmp_path / "table.md"
    assert main(["eval", str(out), "--out", str(metrics), "--markdown", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "| preds | 4 |" in printed and table.read_text().strip() == printed.strip()
    result = json.loads(metrics.read_text())["preds"]
    assert set(result) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "n"} and result["n"] == 4


def test_prompt_with_fixed_shot_ids_and_field_mapping(tiny_llama_dir, tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("key,question,answer\nq1,What is red?,A colour.\nq2,What is two?,A number.\nq3,What is Paris?,A city.\n")
    out = tmp_path / "qa.jsonl"
    assert main([
        "prompt", "--model", str(tiny_llama_dir), "--data", str(data), "--input-field", "question",
        "--target-field", "answer", "--shot-ids", "qa-3", "--instruction", "Answer.", "--output-label", "Answer:", "--chat-template", "off",
        "--max-new-tokens", "3", "--out", str(out), "--no-progress",
    ]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["prompt"] == "Answer.\n\nWhat is Paris?\n\nAnswer: A city.\n\n\nAnswer.\n\nWhat is red?\n\nAnswer:"
    assert rows[2]["shot_ids"] == []  # the only shot is the row itself (ids default to <stem>-<row>)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "missing.jsonl"], "no such data file"),
        (["--data", "dialogsum", "--split", "train"], "no split 'train'"),
        (["--data", "dialogsum", "--shots", "1", "--shot-ids", "nope"], "shot ids not in the pool: nope"),
        (["--data", "dialogsum", "--temperature", "0", "--do-sample"], "temperature must be > 0"),
        (["--data", "dialogsum", "--shots", "0", "--shot-ids", "dev_1"], "--shots 0 with --shot-ids"),
        (["--data", "dialogsum", "--limit", "0"], "limit must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(tiny_llama_dir, tmp_path, capsys, args, message):
    code = main(["prompt", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "o.jsonl"), "--no-progress", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_context_overflow_from_the_cli(tiny_llama_dir, tmp_path, capsys):
    args = ["prompt", "--model", str(tiny_llama_dir), "--data", "dialogsum", "--limit", "1", "--no-progress", "--out", str(tmp_path / "o.jsonl")]
    assert main(args) == 2  # DialogSum dialogues are longer than the tiny model's 256 positions
    assert "exceed the model's context window of 256 tokens" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_on_the_default_model(tmp_path, capsys, monkeypatch):
    import os

    from tests.conftest import _USER_CACHE

    if _USER_CACHE:
        monkeypatch.setenv("TUNELAB_CACHE", _USER_CACHE)
    else:
        monkeypatch.delenv("TUNELAB_CACHE", raising=False)
    assert main(["demo", "--limit", "3", "--shots", "0,1", "--out-dir", str(tmp_path), "--train-steps", "2",
                 "--classifier-steps", "2", "--ppo-steps", "1"]) == 0
    table = capsys.readouterr().out
    assert "| PPO step | reward | KL |" in table and "\n| 1 | " in table
    assert (tmp_path / "detox-ppo" / "final" / "adapter_model.safetensors").is_file()
    assert "| human-baseline | 3 |" in table and "| 0-shot | 3 |" in table and "| 1-shot | 3 |" in table
    assert "| lora-2-steps | 3 |" in table and (tmp_path / "lora" / "final" / "adapter_model.safetensors").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < metrics["0-shot"]["rouge1"] < 1 and metrics["1-shot"]["n"] == 3
    assert os.path.exists(tmp_path / "1-shot.jsonl")


def test_label_users_revoke_and_rotate(tmp_path, capsys):
    from tunelab.feedback.store import LabelStore

    db = str(tmp_path / "labels.sqlite")
    assert main(["label", "users", "add", "ann", "--db", db]) == 0
    old = capsys.readouterr().out.split("token ")[1].split()[0]
    assert main(["label", "users", "revoke", "ann", "--db", db]) == 0
    assert "revoked" in capsys.readouterr().out and LabelStore(db).user_for_token(old) is None
    assert main(["label", "users", "list", "--db", db]) == 0
    assert capsys.readouterr().out.strip().endswith("ann\trevoked")
    assert main(["label", "users", "rotate", "ann", "--db", db]) == 0
    new = capsys.readouterr().out.split("token ")[1].split()[0]
    assert LabelStore(db).user_for_token(new).name == "ann" and new != old
    assert main(["label", "users", "revoke", "zed", "--db", db]) == 2
    assert "no user named 'zed'" in capsys.readouterr().err


def test_serve_keys_come_from_files_and_the_environment(tmp_path, monkeypatch):
    from tunelab.cli import _secrets, build_parser

    (tmp_path / "keys").write_text("# keys\nkey-one\n\nkey-two\n")
    (tmp_path / "admin").write_text("an-admin-token-of-24-chars\n")
    monkeypatch.setenv("TUNELAB_API_KEYS", "key-three, key-one")
    args = build_parser().parse_args(["serve", "--api-key-file", str(tmp_path / "keys"), "--admin-token-file", str(tmp_path / "admin")])
    assert _secrets(args) == (("key-three", "key-one", "key-two"), "an-admin-token-of-24-chars")
