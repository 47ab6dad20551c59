"""Recipes: fields and overrides, errors that name the fix, every shipped recipe valid,
and reading one imports no torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tunelab
from tunelab.recipe import RecipeError, load_recipe

RECIPES = Path(__file__).parents[1] / "recipes"


def test_recipe_fields_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: lora\nlearning_rate: 0.001\nlora:\n  r: 4\n  target_modules: [q_proj]\n")
    config = load_recipe(recipe, ["lora.alpha=8", "max_steps=3", "selective.bitfit=true"])
    assert (config.learning_rate, config.lora.r, config.lora.alpha, config.max_steps) == (0.001, 4, 8, 3)
    assert config.lora.target_modules == ["q_proj"] and config.selective.bitfit is True
    with pytest.raises(RecipeError, match=r"unknown recipe field 'learning_rte'; did you mean 'learning_rate'"):
        load_recipe(recipe, ["learning_rte=1"])
    with pytest.raises(RecipeError, match=r"unknown recipe field 'lora.rank'.*did you mean 'r'|unknown recipe field 'rank'"):
        load_recipe(recipe, ["lora.rank=4"])
    with pytest.raises(RecipeError, match="unknown method 'loar'; did you mean 'lora'"):
        load_recipe(recipe, ["method=loar"])
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_values_take_their_fields_type(tmp_path):
    # YAML 1.1 reads 5e-5 (no dot) as a string: it must still be a learning rate
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 5e-5\nepochs: 2\n")
    config = load_recipe(recipe, ["ppo.kl_coef=1e-2", "max_steps=4.0"])
    assert (config.learning_rate, config.ppo.kl_coef, config.epochs, config.max_steps) == (5e-5, 0.01, 2.0, 4)
    assert isinstance(config.epochs, float) and isinstance(config.max_steps, int)
    for bad, message in [("batch_size=abc", "'batch_size' is an integer, not 'abc'"),
                         ("learning_rate=fast", "'learning_rate' is a number, not 'fast'"),
                         ("bf16=1", "'bf16' is true or false, not 1"), ("max_steps=2.5", "'max_steps' is an integer")]:
        with pytest.raises(RecipeError, match=message):
            load_recipe(recipe, [bad])


def test_shipped_recipes_are_valid():
    recipes = sorted(RECIPES.glob("*.yaml"))
    stages = {}
    for recipe in recipes:
        config = load_recipe(recipe)
        assert config.method and config.output_dir
        stages[recipe.stem] = config.stage
    for name in ("dialogsum-full", "dialogsum-lora", "dialogsum-prompt-tuning", "dialogsum-adapter", "dialogsum-ia3",
                 "dialogsum-bitfit", "multitask"):
        assert stages[name] == "sft"
    assert (stages["hh-rlhf-reward"], stages["toxicity-classifier"], stages["dialogsum-detox-ppo"], stages["hh-rlhf-dpo"]) == (
        "reward", "classifier", "ppo", "dpo")
    methods = {"ppo": "ppo", "rloo": "rloo", "grpo": "grpo", "best-of-n": "rejection-sampling", "rollout-dpo": "rollout-dpo"}
    for lab in ("sentiment", "redteam-detox"):  # each lab has all five methods of the equal-compute comparison
        assert {m: stages[f"{lab}-{m}"] for m in methods} == methods
    assert stages["sst2-sentiment-classifier"] == "classifier"


def test_reading_and_checking_a_recipe_imports_no_torch():
    """`tunelab train --help` and a recipe typo fail in a moment, not after torch loads."""
    check = (
        "import sys\n"
        "from tunelab.recipe import load_recipe\n"
        "for path in sys.argv[1:]:\n"
        "    load_recipe(path)\n"
        "    assert 'torch' not in sys.modules, path + ' imported torch'\n"
    )
    recipes = [str(p) for p in sorted(RECIPES.glob("*.yaml"))]
    source = str(Path(tunelab.__file__).parents[1])
    done = subprocess.run([sys.executable, "-c", check, *recipes], capture_output=True, text=True, timeout=120,
                          cwd=RECIPES.parent, env={**os.environ, "PYTHONPATH": source})
    assert done.returncode == 0, done.stderr[-2000:]
