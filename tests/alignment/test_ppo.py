"""PPO on a tiny Llama and T5: KL is 0 before the first update, the reference never
changes, a toy reward is learnt, resume is exact, and a runaway KL stops the run."""

import json

import pytest
import torch

from tests.conftest import DATA_ROWS
from tunelab.alignment.ppo import PPOTrainer, policy_outputs, rollout_batch
from tunelab.alignment.losses import token_logprobs
from tunelab.models import load_model
from tunelab.models.adapters import load_artifact
from tunelab.recipe import TrainConfig
from tunelab.training.engine import Trainer, TrainingError

# a token each tiny random model samples now and then, and the learning rate that works
TOY = {"llama": ("Summar", 1e-2), "t5": ("F", 3e-3)}


def toy(model_dir):
    return TOY["t5" if "t5" in model_dir.name else "llama"]


def count_reward(target):
    return lambda prompts, responses: [float(r.count(target)) for r in responses]


def ppo_config(model_dir, data, tmp_path, method="lora", steps=4, **ppo):
    target, lr = toy(model_dir)
    config = TrainConfig(stage="ppo", method=method, model=str(model_dir), data=str(data), split=None, max_steps=steps,
                         learning_rate=lr if method == "lora" else lr / 5, warmup_ratio=0.0, scheduler="constant",
                         chat_template="off", max_length=64, output_dir=str(tmp_path / f"ppo-{method}"), seed=0)
    config.ppo.reward = "tests.alignment.rewards:count_target"
    settings = dict(rollout_batch_size=6, mini_batch_size=3, min_new_tokens=4, max_new_tokens=6, ppo_epochs=2, kl_coef=0.05)
    for key, value in {**settings, **ppo}.items():
        setattr(config.ppo, key, value)
    return config


def metrics(trainer):
    return [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]


def frozen_reference(trainer):
    """Everything the reference is made of, cloned."""
    if trainer.reference_model is not None:
        return {k: v.clone() for k, v in trainer.reference_model.state_dict().items()}
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kl_starts_at_zero_and_the_reference_never_changes(method, tiny_model_dir, dialog_file, tmp_path):
    target, _ = toy(tiny_model_dir)
    trainer = PPOTrainer(ppo_config(tiny_model_dir, dialog_file, tmp_path, method), reward=count_reward(target), progress=False)
    reference = frozen_reference(trainer)
    result = trainer.train()
    rows = metrics(trainer)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["kl"] != pytest.approx(0.0, abs=1e-5)  # the policy moved
    for key in ("score", "reward", "kl", "entropy", "clip_fraction", "value_loss", "response_length", "generation_seconds", "update_seconds"):
        assert key in rows[-1]
    after = frozen_reference(trainer)
    assert after.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(value, after[name]), f"reference {name} changed"
    assert (result.artifact / "value_head.safetensors").is_file()
    assert (trainer.output_dir / "ppo.png").is_file()


def test_ppo_learns_a_toy_reward(tiny_model_dir, tmp_path):
    """Reward = how often a response (at most 6 tokens) says a token the random model
    rarely samples. Settings checked to learn on seeds 0-3 for both models."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({**r, "fname": f"{r['fname']}-{i}"}) + "\n" for i in range(4) for r in DATA_ROWS))
    target, _ = toy(tiny_model_dir)
    # the reward takes off suddenly, at a step that moves with the CPU's floating point (seed 0
    # on one machine: step ~25, on another past 30; 45 leaves room on both: 3.4 at the end)
    config = ppo_config(tiny_model_dir, prompts, tmp_path, steps=45, rollout_batch_size=12, mini_batch_size=4, ppo_epochs=4, max_kl=1e9)
    trainer = PPOTrainer(config, reward=count_reward(target), progress=False)
    trainer.train()
    rewards = [r["reward"] for r in metrics(trainer)]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-5:]) / 5
    assert last >= 1.0, rewards
    assert last > 3 * first + 0.5, rewards


def test_policy_log_probs_ignore_padding(tiny_model, tmp_path):
    """Scoring a padded rollout batch gives each row the log-probs it has alone."""
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    prompts = [tokenizer("Where is the bank?")["input_ids"], tokenizer("Hi")["input_ids"]]
    responses = [[5, 6, 7], [8]]
    pad = tokenizer.pad_token_id
    start = model.config.decoder_start_token_id if tiny_model.is_encoder_decoder else None
    batch = rollout_batch(prompts, responses, pad, tiny_model.is_encoder_decoder, start)
    with torch.no_grad():
        logits, hidden = policy_outputs(model, batch, tiny_model.is_encoder_decoder, hidden=True)
        together = token_logprobs(logits, batch["responses"]) * batch["mask"]
        for i in range(2):
            alone = rollout_batch(prompts[i : i + 1], responses[i : i + 1], pad, tiny_model.is_encoder_decoder, start)
            logits, _ = policy_outputs(model, alone, tiny_model.is_encoder_decoder, hidden=False)
            torch.testing.assert_close(together[i, : len(responses[i])], token_logprobs(logits, alone["responses"])[0], atol=1e-4, rtol=1e-4)
    assert hidden.shape[:2] == batch["responses"].shape


def resume_after_a_crash(config, crash_at_step, reward, monkeypatch):
    """Train ``config`` (checkpoints every 2 steps), kill it as step ``crash_at_step`` + 1
    starts, then resume it to the end; returns the resumed trainer."""
    config.save_steps = 2
    original = PPOTrainer.ppo_step

    def crash(self, rows, step):
        if step == crash_at_step:
            raise KeyboardInterrupt("killed")
        return original(self, rows, step)

    monkeypatch.setattr(PPOTrainer, "ppo_step", crash)
    with pytest.raises(KeyboardInterrupt):
        PPOTrainer(config, reward=reward, progress=False).train()
    monkeypatch.setattr(PPOTrainer, "ppo_step", original)
    resumed = PPOTrainer(config, reward=reward, progress=False)
    resumed.train(resume=True)
    return resumed


def test_kill_and_resume_gives_the_same_weights(tiny_llama_dir, dialog_file, tmp_path, monkeypatch):
    """With adaptive KL and reward normalisation, whose running state rides in the checkpoint."""
    target, _ = toy(tiny_llama_dir)
    straight = PPOTrainer(ppo_config(tiny_llama_dir, dialog_file, tmp_path / "a", steps=6, kl_coef=0.1, adaptive_kl=True,
                                     normalize_reward=True),
                          reward=count_reward(target), progress=False)
    straight.config.save_steps = 2
    straight.train()
    expected = straight._trainable()

    config = ppo_config(tiny_llama_dir, dialog_file, tmp_path / "b", steps=6, kl_coef=0.1, adaptive_kl=True,
                        normalize_reward=True)
    resumed = resume_after_a_crash(config, 4, count_reward(target), monkeypatch)
    assert resumed.kl.value == pytest.approx(straight.kl.value)
    assert resumed.moments.state_dict() == straight.moments.state_dict() and straight.moments.count == 6 * 6
    logged = metrics(straight)
    # the log keeps the raw score beside the normalised reward PPO optimised
    # (counts are >= 0; the first step's normalised rewards have mean 0)
    assert all(r["score"] >= 0 for r in logged if "score" in r) and logged[0]["reward"] == pytest.approx(0.0, abs=1e-5)
    for name, value in resumed._trainable().items():
        assert torch.equal(value, expected[name]), f"{name} differs after resume"


def test_a_runaway_kl_stops_the_run(tiny_llama_dir, dialog_file, tmp_path):
    target, _ = toy(tiny_llama_dir)
    config = ppo_config(tiny_llama_dir, dialog_file, tmp_path, steps=6, max_kl=-1.0)
    config.save_steps = 1
    with pytest.raises(TrainingError, match=r"KL to the reference reached .* past ppo.max_kl=-1.0.*no checkpoint"):
        PPOTrainer(config, reward=count_reward(target), progress=False).train()


def test_ppo_continues_a_trained_adapter_whose_copy_is_the_reference(tiny_model_dir, dialog_file, tmp_path):
    from tests.training.test_methods import make_config

    sft = Trainer(make_config(tiny_model_dir, dialog_file, tmp_path, "lora", max_steps=3), progress=False).train()
    target, _ = toy(tiny_model_dir)
    config = ppo_config(tiny_model_dir, dialog_file, tmp_path, init_adapter=str(sft.artifact))
    trainer = PPOTrainer(config, reward=count_reward(target), progress=False)
    model = trainer.accelerator.unwrap_model(trainer.model)
    reference = {k: v.clone() for k, v in model.named_parameters() if ".reference." in k}
    assert reference and not any(v.requires_grad for k, v in model.named_parameters() if ".reference." in k)
    result = trainer.train()
    assert metrics(trainer)[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    for name, value in model.named_parameters():
        if ".reference." in name:
            assert torch.equal(value, reference[name])
    # the artifact is one plain adapter on the same base
    policy = load_artifact(load_model(str(tiny_model_dir), device="cpu").model, result.artifact)
    assert list(policy.peft_config) == ["default"]


def test_ppo_recipe_errors(tiny_llama_dir, dialog_file, tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="stage ppo needs ppo.reward"):
        load_recipe(None, ["stage=ppo"])
    config = ppo_config(tiny_llama_dir, dialog_file, tmp_path, rollout_batch_size=50, mini_batch_size=4)
    with pytest.raises(TunelabError, match="6 prompts, fewer than rollout_batch_size=50"):
        PPOTrainer(config, progress=False).train()
    config = ppo_config(tiny_llama_dir, dialog_file, tmp_path, init_adapter=str(tmp_path))
    with pytest.raises(TunelabError, match="not a LoRA adapter folder"):
        PPOTrainer(config, progress=False)


def test_an_init_adapter_with_pickled_weights_is_refused(tiny_llama_dir, dialog_file, tmp_path):
    """ppo.init_adapter passes the safetensors-only check every adapter load passes."""
    from tunelab.errors import MethodError

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}))
    torch.save({}, pickled / "adapter_model.bin")
    config = ppo_config(tiny_llama_dir, dialog_file, tmp_path, init_adapter=str(pickled))
    with pytest.raises(MethodError, match=r"no adapter_model.safetensors; pickled weights \(adapter_model.bin\) are never loaded"):
        PPOTrainer(config, progress=False)


def test_trimming_prompt_padding_keeps_the_log_probs(tiny_model):
    """A minibatch of short prompts drops the columns only the rollout batch's long prompt
    needed, and scores its rows exactly as before."""
    from tunelab.alignment.ppo import _select, trim_prompt_padding

    model, tokenizer, seq2seq = tiny_model.model, tiny_model.tokenizer, tiny_model.is_encoder_decoder
    prompts = [tokenizer("Where is the bank? Next to the park, by the river, past the school.")["input_ids"],
               tokenizer("Hi")["input_ids"], tokenizer("It is raining")["input_ids"]]
    start = model.config.decoder_start_token_id if seq2seq else None
    batch = rollout_batch(prompts, [[5, 6, 7], [8], [9, 10]], tokenizer.pad_token_id, seq2seq, start)
    part = _select(batch, torch.tensor([1, 2]))
    trimmed = trim_prompt_padding(part, seq2seq)
    assert trimmed["input_ids"].shape[1] == part["input_ids"].shape[1] - (len(prompts[0]) - len(prompts[2]))
    assert trim_prompt_padding(batch, seq2seq)["input_ids"].shape == batch["input_ids"].shape
    with torch.no_grad():
        logits, _ = policy_outputs(model, part, seq2seq, hidden=False)
        short_logits, _ = policy_outputs(model, trimmed, seq2seq, hidden=False)
    mask = part["mask"]
    torch.testing.assert_close(token_logprobs(short_logits, part["responses"]) * mask,
                               token_logprobs(logits, part["responses"]) * mask, atol=1e-5, rtol=1e-5)


def prompts_of_three_lengths(tmp_path):
    """18 prompts: each dialogue as it is, with one and with two " Yes." added."""
    rows = [{**r, "fname": f"{r['fname']}-{i}", "dialogue": r["dialogue"] + " Yes." * i} for i in range(3) for r in DATA_ROWS]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prompts


def test_hardest_prompts_are_the_lowest_scored_and_a_resume_keeps_them(tiny_llama_dir, tmp_path):
    """The reward here is minus the prompt's length: the hardest prompts are the longest."""
    prompts = prompts_of_three_lengths(tmp_path)
    seen = []

    def minus_length(prompts, responses):
        seen.extend(prompts)
        return [-float(len(p)) for p in prompts]

    config = ppo_config(tiny_llama_dir, prompts, tmp_path, steps=2, rollout_batch_size=4, mini_batch_size=2,
                        hardest_prompts=6)
    trainer = PPOTrainer(config, reward=minus_length, progress=False)
    pool = [r["text"] for r in trainer.rows]
    trainer.train()
    chosen = json.loads((trainer.output_dir / "hardest_prompts.json").read_text())
    longest = sorted(range(len(pool)), key=lambda i: (-len(pool[i]), i))[:6]
    assert chosen["pool"] == 18 and chosen["indices"] == longest
    assert chosen["scores"] == sorted(chosen["scores"]) and len(chosen["texts"]) == 6 and chosen["by"] == "response"
    assert set(seen[18:]) <= {pool[i] for i in longest}  # every rollout after the search came from them
    again = PPOTrainer(config, reward=minus_length, progress=False)
    seen.clear()
    kept = again.keep_hardest(again.rows, resume=True)
    assert not seen and [r["text"] for r in kept] == [pool[i] for i in longest]
    with pytest.raises(Exception, match="hardest_prompts must be 0"):
        PPOTrainer(ppo_config(tiny_llama_dir, prompts, tmp_path, rollout_batch_size=4, hardest_prompts=2), reward=minus_length)
    with pytest.raises(Exception, match="hardest_by must be 'response' or 'prompt', not 'reply'"):
        PPOTrainer(ppo_config(tiny_llama_dir, prompts, tmp_path, hardest_by="reply"), reward=minus_length)


def test_hardest_prompts_by_the_prompt_itself_generate_nothing(tiny_llama_dir, tmp_path):
    """hardest_by: prompt scores each raw prompt as the text (e.g. a request's toxicity)."""
    prompts = prompts_of_three_lengths(tmp_path)
    seen = []

    def minus_length(prompts, responses):
        seen.append(list(responses))
        return [-float(len(r)) for r in responses]

    config = ppo_config(tiny_llama_dir, prompts, tmp_path, rollout_batch_size=4, hardest_prompts=4, hardest_by="prompt")
    trainer = PPOTrainer(config, reward=minus_length, progress=False)
    raw = [r["input"] for r in trainer.rows]
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    kept = trainer.keep_hardest(trainer.rows, resume=False)
    assert seen == [raw]  # one call, on the prompts themselves: nothing was generated
    assert [r["input"] for r in kept] == sorted(raw, key=lambda t: -len(t))[:4]
