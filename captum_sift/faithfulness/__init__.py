"""Faithfulness of attribution methods: deletion/insertion, Quantus metrics, comparison tables."""

from .compare import (
    BETTER,
    DEFAULT_METHODS,
    METHODS,
    ComparisonTable,
    compare,
    deletion_insertion,
    deletion_insertion_curves,
    explain,
    patch_attribution,
)

__all__ = [
    "BETTER",
    "ComparisonTable",
    "DEFAULT_METHODS",
    "METHODS",
    "compare",
    "deletion_insertion",
    "deletion_insertion_curves",
    "explain",
    "patch_attribution",
]
