"""Inter-labeler agreement on rankings: how often two labelers order a pair of
completions the same way, and Kendall's tau-b between their rankings.

A ranking here is {completion id: rank or None}; 1 is best, equal ranks are ties, None
('not relevant') leaves the completion out. Two labelers are compared on the completions
both ranked.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

Ranking = Mapping[str, "int | None"]


def _common(a: Ranking, b: Ranking) -> list[tuple[float, float]]:
    return [(float(a[k]), float(b[k])) for k in sorted(set(a) & set(b)) if a[k] is not None and b[k] is not None]


def pairwise_agreement(a: Ranking, b: Ranking) -> float | None:
    """Among the completion pairs that both labelers put in a strict order, the fraction
    they order the same way (None when there is no such pair)."""
    ranks = _common(a, b)
    same = strict = 0
    for (a1, b1), (a2, b2) in combinations(ranks, 2):
        if a1 != a2 and b1 != b2:
            strict += 1
            same += (a1 < a2) == (b1 < b2)
    return same / strict if strict else None


def kendall_tau_b(a: Ranking, b: Ranking) -> float | None:
    """Kendall's tau-b (ties corrected) between two rankings of the same completions;
    None when either ranking is all ties on the common completions."""
    ranks = _common(a, b)
    concordant = discordant = ties_a = ties_b = 0
    for (a1, b1), (a2, b2) in combinations(ranks, 2):
        if a1 == a2 and b1 == b2:
            continue  # tied in both: counts in neither correction term's numerator
        if a1 == a2:
            ties_a += 1
        elif b1 == b2:
            ties_b += 1
        elif (a1 < a2) == (b1 < b2):
            concordant += 1
        else:
            discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def agreement_report(judgements: Sequence[Mapping[str, Any]], names: Mapping[int, str]) -> dict[str, Any]:
    """Agreement per prompt (over its labeler pairs), per labeler (over their pairs with
    others) and overall. ``judgements`` rows have prompt_id, user_id and ranks."""
    by_prompt: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in judgements:
        by_prompt[row["prompt_id"]].append(row)
    per_prompt, per_user_agree, per_user_tau = {}, defaultdict(list), defaultdict(list)
    all_agree, all_tau = [], []
    for prompt_id, rows in sorted(by_prompt.items()):
        agree, tau = [], []
        for first, second in combinations(rows, 2):
            pair_agree, pair_tau = pairwise_agreement(first["ranks"], second["ranks"]), kendall_tau_b(first["ranks"], second["ranks"])
            for user in (first["user_id"], second["user_id"]):
                if pair_agree is not None:
                    per_user_agree[user].append(pair_agree)
                if pair_tau is not None:
                    per_user_tau[user].append(pair_tau)
            if pair_agree is not None:
                agree.append(pair_agree)
            if pair_tau is not None:
                tau.append(pair_tau)
        all_agree += agree
        all_tau += tau
        per_prompt[prompt_id] = {"labelers": len(rows), "agreement": _mean(agree), "kendall_tau": _mean(tau)}
    users = sorted({row["user_id"] for row in judgements})
    per_labeler = {names.get(u, str(u)): {"judgements": sum(r["user_id"] == u for r in judgements),
                                          "agreement": _mean(per_user_agree[u]), "kendall_tau": _mean(per_user_tau[u])}
                   for u in users}
    return {"agreement": _mean(all_agree), "kendall_tau": _mean(all_tau), "labeler_pairs": len(all_tau),
            "per_prompt": per_prompt, "per_labeler": per_labeler}
