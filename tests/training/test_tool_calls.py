"""Tool-use fine-tuning data: GSM8K solutions with calculator calls, where the loss falls
on what the model writes and never on what the calculator writes."""

import json

import pytest
import torch

from tests.conftest import train_tokenizer
from tunelab.training.data import IGNORE_INDEX, collate, target_tokens

SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"
ROWS = [{"question": "Natalia sold clips to 48 friends, then half as many. How many in all?", "answer": SOLUTION},
        {"question": "Weng earns $12 an hour. How much for 50 minutes?",
         "answer": "12/60 = $<<12/60=0.2>>0.2 a minute.\n0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"}]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(all_bytes=True, vocab_size=400)


def test_the_calculator_output_is_left_out_of_the_loss(tokenizer):
    ids, labels = target_tokens(tokenizer, " ", SOLUTION, "tool")
    assert ids[-1] == labels[-1] == tokenizer.eos_token_id and len(ids) == len(labels)
    hidden = tokenizer.decode([t for t, label in zip(ids, labels) if label == IGNORE_INDEX])
    trained = tokenizer.decode([label for label in labels if label != IGNORE_INDEX], skip_special_tokens=True)
    assert hidden.replace(" ", "") == "24>>72>>"  # only the results and their closing ">>"
    assert "<<48/2=" in trained and "24>>" not in trained and trained.endswith("#### 72")
    assert tokenizer.decode(ids, skip_special_tokens=True) == " " + SOLUTION  # the model still reads all of it


def test_keep_and_strip(tokenizer):
    ids, labels = target_tokens(tokenizer, "", SOLUTION, "keep")
    assert ids == labels
    ids, labels = target_tokens(tokenizer, "", SOLUTION, "strip")
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert ids == labels and "<<" not in text and text.startswith("Natalia sold 48/2 = 24 clips")


def test_seq2seq_decoder_reads_the_hidden_tokens():
    rows = [{"input_ids": [5, 6], "labels": [7, IGNORE_INDEX, 9, 2], "decoder_targets": [7, 8, 9, 2]},
            {"input_ids": [5], "labels": [7, 2]}]
    batch = collate(rows, pad_id=0, is_encoder_decoder=True, decoder_start=0)
    assert batch["decoder_input_ids"].tolist() == [[0, 7, 8, 9], [0, 7, 0, 0]]
    assert batch["labels"].tolist() == [[7, IGNORE_INDEX, 9, 2], [7, 2, IGNORE_INDEX, IGNORE_INDEX]]


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_training_with_tool_calls(arch, agent_llama_dir, agent_t5_dir, tmp_path):
    from tunelab.cli import main

    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 3))
    model = agent_llama_dir if arch == "llama" else agent_t5_dir
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: lora\nmodel: {model}\ndata: {data}\nsplit: null\nmax_steps: 2\nbatch_size: 2\n"
                      "chat_template: 'off'\ntool_calls: tool\ninstruction: Solve it.\noutput_label: 'Solution:'\n")
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(out), "--no-progress"]) == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(x)) for x in losses)
    assert main(["train", str(recipe), "tool_calls=maybe", "--output-dir", str(tmp_path / "bad")]) == 2


def test_recipes_prompt_as_the_agent_evaluates():
    from pathlib import Path

    from tunelab.agents.tasks import INSTRUCTIONS
    from tunelab.recipe import load_recipe

    recipes = Path(__file__).parents[2] / "recipes"
    tool, plain = load_recipe(recipes / "gsm8k-calculator.yaml"), load_recipe(recipes / "gsm8k-no-tool.yaml")
    assert (tool.tool_calls, plain.tool_calls) == ("tool", "strip")
    assert tool.instruction == INSTRUCTIONS["calculator"] and plain.instruction == INSTRUCTIONS["cot"]
    assert tool.chat_template == plain.chat_template == "on" and tool.data == plain.data == "gsm8k"
