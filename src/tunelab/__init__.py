"""tunelab: the generative-AI lifecycle for language models on one machine.

Stages live in sub-packages (models, data, prompting, generation, evaluation); import
them directly. This top-level module stays import-light so `tunelab --help` is instant.
"""

__version__ = "0.1.0"
