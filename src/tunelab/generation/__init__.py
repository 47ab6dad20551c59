"""Generation: batched, length-sorted decoding with a KV cache for both architectures.

``GenerationSettings`` is importable without torch; ``generate`` loads torch on first use.
"""

from tunelab.generation.settings import GenerationSettings


def __getattr__(name: str):
    if name in ("Generation", "generate", "generate_from_ids"):
        from tunelab.generation import batched

        return getattr(batched, name)
    raise AttributeError(name)


__all__ = ["Generation", "GenerationSettings", "generate", "generate_from_ids"]
