"""Faithfulness of attribution methods: the methods by name, deletion/insertion, Quantus metrics, localisation
against ground truth, comparison tables."""

from .compare import BETTER, ComparisonTable, compare
from .localisation import LOCALISATION_METRICS, localisation_scores, patch_masks, road_scores
from .methods import DEFAULT_METHODS, METHODS, explain, patch_attribution
from .metrics import deletion_insertion, deletion_insertion_curves

__all__ = [
    "BETTER",
    "ComparisonTable",
    "DEFAULT_METHODS",
    "LOCALISATION_METRICS",
    "METHODS",
    "compare",
    "deletion_insertion",
    "deletion_insertion_curves",
    "explain",
    "localisation_scores",
    "patch_attribution",
    "patch_masks",
    "road_scores",
]
