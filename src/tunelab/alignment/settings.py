"""The settings of each alignment stage, as recipes hold them (``ppo:``, ``dpo:``, ...).

Kept apart from the trainers, which import torch, so that reading and checking a recipe
imports none; each field's help text is its CLI help.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RewardSettings:
    """``stage: reward`` (alignment/reward.py): the pairwise reward model's loss."""

    use_margin: bool = field(default=False, metadata={"help": "Subtract each pair's 'margin' inside the Bradley-Terry loss (Llama 2's margin loss)."})
    center_coef: float = field(default=0.0, metadata={"help": "Weight of (r_chosen + r_rejected)^2, keeping rewards near 0 (Eisenstein et al., 2023; TRL suggests 0.01)."})


@dataclass
class ClassifierSettings:
    """``stage: classifier`` (alignment/reward.py): the labelled data and the rewarded class."""

    text_field: str = field(default="tweet", metadata={"help": "Column holding the text."})
    label_field: str = field(default="class", metadata={"help": "Column holding the label (a class index or name)."})
    labels: list[str] = field(default_factory=lambda: ["hate", "offensive", "neither"], metadata={"help": "Class names in index order (Davidson: 0 hate speech, 1 offensive, 2 neither)."})
    reward_label: str = field(default="neither", metadata={"help": "The class whose score is the reward when PPO uses this classifier (detox: the non-toxic class)."})
    balance: bool = field(default=True, metadata={"help": "Weight the loss by inverse class frequency (Davidson is 77% 'offensive')."})


@dataclass
class PPOSettings:
    """``stage: ppo``, ``rloo`` and ``grpo`` (alignment/ppo.py): reward, rollouts, KL
    penalty, clipped updates. RLOO and GRPO read the same section (and group_size)."""

    reward: str = field(default="", metadata={"help": "Reward: a reward model or classifier folder (tunelab train output), or module:function taking (prompts, responses)."})
    reward_output: str = field(default="logit", metadata={"help": "For a classifier: the reward is the chosen class's logit, probability or log_probability (the last focuses on the texts the classifier doubts)."})
    reward_label: str | None = field(default=None, metadata={"help": "For a classifier: the rewarded class (default: the one it was trained to reward, e.g. 'neither')."})
    monitor_reward: str = field(default="", metadata={"help": "A second reward (folder or module:function) scored on the held-out responses only, never trained on: eval.json's monitor_reward_mean shows whether the trained reward was gamed (e.g. the hh-rlhf reward model beside a toxicity reward)."})
    monitor_prompt: str = field(default="{input}", metadata={"help": "How the monitor reads each held-out prompt; {input} is the raw prompt (the hh-rlhf reward model: '\\n\\nHuman: {input}\\n\\nAssistant:')."})
    normalize_reward: bool = field(default=False, metadata={"help": "Scale scores by a running mean/std before the KL penalty."})
    length_penalty: float = field(default=0.0, metadata={"help": "Subtracted from the score per response token (0 = none)."})
    hardest_prompts: int = field(default=0, metadata={"help": "Train on the N training prompts whose greedy response the reward scores lowest, found before training among the `limit` loaded (0 = train on all; every online stage, rejection-sampling and rollout-dpo): rollouts and samples go where there is something to correct, e.g. the few summaries a toxicity classifier doubts."})
    hardest_by: str = field(default="response", metadata={"help": "What hardest_prompts scores: 'response' (each prompt's greedy response) or 'prompt' (the prompt's own text, no generation: for a classifier reward, e.g. how toxic the request is)."})
    init_adapter: str | None = field(default=None, metadata={"help": "Continue a trained LoRA adapter (e.g. the DialogSum summarizer); it is also the reference."})
    rollout_batch_size: int = field(default=16, metadata={"help": "Prompts per step (the course: 16)."})
    group_size: int = field(default=4, metadata={"help": "RLOO and GRPO: samples per prompt, compared with each other (so a step has rollout_batch_size x group_size rollouts); PPO samples one."})
    mini_batch_size: int = field(default=4, metadata={"help": "Rollouts per gradient step inside a PPO epoch."})
    ppo_epochs: int = field(default=1, metadata={"help": "Passes over each step's rollouts (Schulman et al.: 3-10; the course: 1)."})
    min_new_tokens: int = field(default=40, metadata={"help": "Response length range: each step's length limit is drawn from [min_new_tokens, max_new_tokens]."})
    max_new_tokens: int = field(default=60, metadata={"help": "Longest response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts (log-probs use the same)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling for rollouts (0 = the whole vocabulary, so log-probs are the policy's)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling for rollouts."})
    kl_coef: float = field(default=0.2, metadata={"help": "KL coefficient (Ziegler et al.: 0.2): PPO and RLOO subtract it x KL from the reward, GRPO adds it x KL to the loss (the paper: 0.04)."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt the coefficient so the KL tracks target_kl (Ziegler et al.)."})
    target_kl: float = field(default=6.0, metadata={"help": "Adaptive KL target (nats per response)."})
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive KL horizon (Ziegler et al.: 10000)."})
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimate: k1 (log-ratio) or k3 (non-negative)."})
    max_kl: float = field(default=30.0, metadata={"help": "Stop the run when the mean KL to the reference exceeds this (nats per response)."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    clip_range: float = field(default=0.2, metadata={"help": "Policy ratio clip epsilon."})
    clip_range_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})


@dataclass
class DPOSettings:
    """``stage: dpo`` (alignment/dpo.py): DPO or IPO against the policy before training."""

    beta: float = field(default=0.1, metadata={"help": "Strength of the pull towards the reference (paper: 0.1; IPO's tau)."})
    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid (DPO) or ipo."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Assumed fraction of flipped preference labels (conservative DPO; sigmoid only)."})
    precompute_reference: bool = field(default=True, metadata={"help": "Compute the reference log-probs once before training (exact: the reference never changes)."})
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off so policy and reference log-probs are comparable (as TRL does)."})
