"""Toy rewards for PPO tests (`module:function` rewards)."""

TARGET = "park"


def count_target(prompts, responses):
    """Reward a response for each time it says the target word."""
    return [float(r.count(TARGET)) for r in responses]


def wrong_count(prompts, responses):
    return [0.0]


def length(prompts, responses):
    """Reward the longer response (in characters)."""
    return [float(len(r)) for r in responses]
