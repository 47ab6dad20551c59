"""hh-rlhf transcripts: "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues, whose chosen and
rejected versions share everything up to the last assistant turn. Read by preference
training (alignment) and by the harmlessness scenario of evaluation, so it lives here."""

from __future__ import annotations

from tunelab.errors import DataError

ASSISTANT_TURN = "\n\nAssistant:"


def split_transcripts(chosen: str, rejected: str, *, where: str) -> tuple[str, str, str]:
    """Returns (prompt ending in 'Assistant:', chosen answer, rejected answer)."""
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    cut = chosen.rfind(ASSISTANT_TURN, 0, common)
    if cut < 0:
        raise DataError(f"{where}: chosen and rejected share no '\\n\\nHuman: ... \\n\\nAssistant:' prompt; "
                        "give 'prompt', 'chosen' and 'rejected' fields instead")
    end = cut + len(ASSISTANT_TURN)
    return chosen[:end], chosen[end:], rejected[end:]
