"""Alignment with human feedback: preference data, reward models and classifiers, PPO with
a KL penalty, DPO. Each trainer is one file; the loss maths is in ``losses``."""
