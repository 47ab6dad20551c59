"""What constrained decoding needs from a constraint (a grammar, a JSON schema): the
generation loop asks it, for each new token of its row, which tokens may come next, and
tells it which one was chosen. Implemented in agents/constrained.py with llguidance."""

from __future__ import annotations

from typing import Any, Protocol


class Constraint(Protocol):
    def mask_(self, logits: Any) -> None:
        """Set, in place, the logits (one row, the whole vocabulary) of every token that
        may not come next to -inf."""

    def consume(self, token: int) -> None:
        """The token chosen (it was allowed)."""

    @property
    def finished(self) -> bool:
        """Whether the constrained text is complete and nothing may follow."""
