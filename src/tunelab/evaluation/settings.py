"""Settings of `tunelab evaluate`: a plain dataclass the CLI reads without torch."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from tunelab.errors import TunelabError
from tunelab.evaluation.scenarios import FORMATS, GENERATIVE, SUITES, scenario

CACHE_VERSION = 2  # bump when a change alters cached scores (2: raw scores, not metrics)


@dataclass
class EvalSettings:
    """What to score and how; what a scenario's result depends on is part of its cache key."""

    scenarios: tuple[str, ...] = field(default=tuple(SUITES["holistic"]), metadata={
        "help": "Scenarios to score (--suite picks a set)."})
    format: str = field(default="tunelab", metadata={
        "help": "Prompt formats: tunelab's own, or lm-eval's default task formats.", "choices": FORMATS})
    shots: int = field(default=0, metadata={"help": "Solved training examples before each item (one seeded draw)."})
    seed: int = field(default=0, metadata={"help": "Seed of the shots, the subset and the perturbations."})
    limit: int | None = field(default=None, metadata={"help": "The first N items of each scenario (default: all)."})
    items: int | None = field(default=None, metadata={
        "help": "Fast mode: a fixed stratified subset of N items per scenario (by answer and category)."})
    chat_template: bool = field(default=False, metadata={
        "help": "Put each context in the model's chat template as a user turn; options are the reply."})
    perturb: bool = field(default=True, metadata={
        "help": "Score robustness (typos, case, whitespace, contractions) and fairness (gender, names) too."})
    mutual_info: bool = field(default=True, metadata={
        "help": "Also score each option with no context, for acc_mi (one more pass)."})
    toxicity: str | None = field(default=None, metadata={
        "help": "A classifier folder (e.g. recipes/toxicity-classifier.yaml's) scoring the toxicity of generated "
        "summaries as 1 - P(its reward label, 'neither')."})
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95%% intervals (0: none)."})
    batch_size: int = field(default=8, metadata={"help": "Items per forward pass (not part of the results)."})

    def validate(self) -> None:
        for name in self.scenarios:
            if name not in GENERATIVE:
                scenario(name)
        if self.format not in FORMATS:
            raise TunelabError(f"unknown format '{self.format}'; formats: {', '.join(FORMATS)}")
        if self.shots < 0 or (self.limit is not None and self.limit < 1) or (self.items is not None and self.items < 1):
            raise TunelabError("shots must be >= 0, and limit and items >= 1")
        if self.batch_size < 1 or self.bootstrap < 0:
            raise TunelabError("batch_size must be >= 1 and bootstrap >= 0")
        if self.shots:  # before any scenario is scored, not after the first few
            for name in self.scenarios:
                if name not in GENERATIVE:
                    scenario(name).check_shots(self.shots)

    def key(self, name: str, runtime: str = "") -> str:
        """The cache key of one scenario's raw scores: the settings they depend on, and
        ``runtime``, where they ran (device, dtype). Metric settings (bootstrap resamples,
        the toxicity classifier) are applied to the cached scores, so they are not in it;
        a generated scenario does not depend on the prompt format or the perturbations."""
        unused = ("bootstrap", "toxicity", *(("format", "perturb", "mutual_info") if name in GENERATIVE else ()))
        fields = {k: v for k, v in asdict(self).items() if k not in ("scenarios", "batch_size", *unused)}
        text = json.dumps({"scenario": name, "version": CACHE_VERSION, "runtime": runtime, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
