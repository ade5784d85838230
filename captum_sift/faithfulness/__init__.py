"""Faithfulness of attribution methods: the methods by name, deletion/insertion, Quantus metrics, comparison tables."""

from .compare import BETTER, ComparisonTable, compare
from .methods import DEFAULT_METHODS, METHODS, explain, patch_attribution
from .metrics import deletion_insertion, deletion_insertion_curves

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
