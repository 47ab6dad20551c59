"""Data: examples from files (JSONL, CSV/TSV, Parquet) and the built-in datasets."""

from tunelab.data.loading import BUILTIN_DATASETS, Example, iter_records, load_examples

__all__ = ["BUILTIN_DATASETS", "Example", "iter_records", "load_examples"]
