"""Seeded perturbations of an input, HELM-style: robustness (typos, casing, whitespace,
contractions) and fairness (gendered words and first names swapped). Each is a pure
function of (text, random generator); the generator is seeded by (seed, perturbation,
item id), so a perturbed item is the same in every run and for every model.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# Neighbouring keys on a QWERTY keyboard: a typo hits one of them.
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours() -> dict[str, str]:
    near: dict[str, str] = {}
    for r, row in enumerate(_KEYBOARD):
        for c, key in enumerate(row):
            keys = [row[c - 1] if c else "", row[c + 1] if c + 1 < len(row) else ""]
            keys += [other[c] for other in (_KEYBOARD[r - 1] if r else "", _KEYBOARD[r + 1] if r + 1 < 3 else "")
                     if c < len(other)]
            near[key] = "".join(keys)
    return near


NEIGHBOURS = _neighbours()


def typos(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Each word of 3+ letters, with probability ``rate``, gets one letter replaced by a
    neighbouring key (HELM's butter-finger typos), keeping its case."""
    def one(match: re.Match) -> str:
        word = match.group(0)
        if rng.random() >= rate:
            return word
        at = rng.randrange(len(word))
        choices = NEIGHBOURS.get(word[at].lower(), "")
        if not choices:
            return word
        new = rng.choice(choices)
        return word[:at] + (new.upper() if word[at].isupper() else new) + word[at + 1:]
    return re.sub(r"[A-Za-z]{3,}", one, text)


def lowercase(text: str, rng: random.Random) -> str:
    return text.lower()


def whitespace(text: str, rng: random.Random) -> str:
    """Every space becomes 1 to 3 spaces (HELM's extra-space perturbation)."""
    return re.sub(r" ", lambda _: " " * rng.randint(1, 3), text)


CONTRACTIONS = {
    "do not": "don't", "does not": "doesn't", "did not": "didn't", "is not": "isn't", "are not": "aren't",
    "was not": "wasn't", "were not": "weren't", "have not": "haven't", "has not": "hasn't", "had not": "hadn't",
    "can not": "can't", "cannot": "can't", "could not": "couldn't", "would not": "wouldn't",
    "should not": "shouldn't", "will not": "won't", "it is": "it's", "that is": "that's", "I am": "I'm",
    "you are": "you're", "we are": "we're", "they are": "they're", "he is": "he's", "she is": "she's",
    "I have": "I've", "you have": "you've", "we have": "we've", "they have": "they've", "I will": "I'll",
    "you will": "you'll", "we will": "we'll", "they will": "they'll", "let us": "let's", "there is": "there's",
}
_EXPANSIONS = {short: long for long, short in CONTRACTIONS.items() if long != "cannot"}


def _swap_words(text: str, table: dict[str, str]) -> str:
    """Replace whole words or phrases from ``table`` (matched ignoring case); the first
    letter takes the case of the word it replaces."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True)) + r")\b",
                         re.IGNORECASE)
    lowered = {k.lower(): v for k, v in table.items()}

    def one(match: re.Match) -> str:
        found = match.group(0)
        new = lowered[found.lower()]
        return (new[0].upper() if found[0].isupper() else new[0].lower()) + new[1:]
    return pattern.sub(one, text)


def contractions(text: str, rng: random.Random) -> str:
    """Contract what can be contracted ("do not" -> "don't"); a text with nothing to
    contract has its contractions expanded instead (HELM's contraction/expansion pair)."""
    contracted = _swap_words(text, CONTRACTIONS)
    return contracted if contracted != text else _swap_words(text, _EXPANSIONS)


GENDERED = {
    "he": "she", "him": "her", "his": "her", "himself": "herself", "man": "woman", "men": "women", "boy": "girl",
    "boys": "girls", "father": "mother", "fathers": "mothers", "son": "daughter", "sons": "daughters",
    "brother": "sister", "brothers": "sisters", "husband": "wife", "husbands": "wives", "uncle": "aunt",
    "king": "queen", "gentleman": "lady", "gentlemen": "ladies", "mr": "mrs", "male": "female", "boyfriend": "girlfriend",
}
# "her" maps back to "his" (it is as often "him"; HELM makes the same choice).
_GENDER_SWAP = {**GENDERED, **{v: k for k, v in GENDERED.items() if v != "her"}, "her": "his"}


def gender(text: str, rng: random.Random) -> str:
    """Gendered words and pronouns swapped (he <-> she, man <-> woman, ...)."""
    return _swap_words(text, _GENDER_SWAP)


# First names from Bertrand and Mullainathan (2004), "Are Emily and Greg More Employable
# than Lakisha and Jamal?", paired within gender across the two groups, as HELM's
# person-name perturbation uses them.
# (Their "Kenya" and its pair are left out: Kenya is a country far more often.)
NAME_PAIRS = [
    ("Allison", "Aisha"), ("Anne", "Ebony"), ("Carrie", "Keisha"), ("Emily", "Lakisha"), ("Jill", "Latonya"),
    ("Laurie", "Latoya"), ("Kristen", "Tamika"), ("Meredith", "Tanisha"),
    ("Brad", "Darnell"), ("Brendan", "Hakim"), ("Geoffrey", "Jermaine"), ("Greg", "Jamal"), ("Brett", "Kareem"),
    ("Jay", "Leroy"), ("Matthew", "Rasheed"), ("Neil", "Tremayne"), ("Todd", "Tyrone"),
]
_NAME_SWAP = {**dict(NAME_PAIRS), **{b: a for a, b in NAME_PAIRS}}


def names(text: str, rng: random.Random) -> str:
    """First names swapped with their pair from the other group (any case: BoolQ's
    questions are lower case)."""
    return _swap_words(text, _NAME_SWAP)


Perturbation = Callable[[str, random.Random], str]
ROBUSTNESS: dict[str, Perturbation] = {"typos": typos, "lowercase": lowercase, "whitespace": whitespace,
                                       "contractions": contractions}
FAIRNESS: dict[str, Perturbation] = {"gender": gender, "names": names}
PERTURBATIONS: dict[str, Perturbation] = {**ROBUSTNESS, **FAIRNESS}


def perturb_row(row: dict, fields: tuple[str, ...], name: str, item_id: str, seed: int = 0,
                answers: tuple[str, ...] = ()) -> dict:
    """The row with ``fields`` perturbed by ``name``, seeded by (seed, name, item id). A
    fairness swap also applies to the ``answers`` fields (as HELM perturbs references):
    a context that now says "the man" must be answered "the man"; robustness
    perturbations leave answers alone."""
    rng = random.Random(f"{seed}:{name}:{item_id}")
    touched = fields + (answers if name in FAIRNESS else ())
    return {**row, **{f: PERTURBATIONS[name](row[f], rng) for f in touched if isinstance(row.get(f), str)}}
