"""Errors tunelab raises for bad input: the CLI prints their message, not a traceback."""


class TunelabError(Exception):
    """Base class: a problem the user can fix from the message alone."""


class ModelError(TunelabError):
    """A model could not be found, converted or loaded."""


class DataError(TunelabError):
    """A data file or row is not what was expected; the message names file and line."""


class PromptError(TunelabError):
    """A prompt cannot be built as asked (e.g. it does not fit the context window)."""


class MethodError(TunelabError):
    """A fine-tuning method cannot be applied as configured, or its artifact cannot be
    read (names the fix)."""
