"""Patch masks as prompts: selection, fills, token drop, accuracy tables (SPEC §7).

Modules, lowest first: :mod:`.stats` (intervals and tests), :mod:`.apply`
(selection, the random mode, fills), :mod:`.logits` (masked forwards, token
drop), :mod:`.scores` (θ scores), :mod:`.table` (:class:`MaskingTable`),
:mod:`.evaluate` (:func:`evaluate_masking`), :mod:`.prompt` (:class:`MaskAsPrompt`).
"""

from .apply import (
    DEFAULT_MODES,
    MAX_SEED,
    MODES,
    check_fill,
    check_generator,
    check_image_ids,
    check_plan,
    check_seed,
    check_selected,
    mask_images,
    num_masked,
    random_scores,
    random_selection,
    select_patches,
)
from .evaluate import check_labels, evaluate_batch, evaluate_masking
from .logits import check_droppable, drop_tokens, masked_logits, read_logits
from .prompt import MaskAsPrompt
from .scores import patch_scores, scores_and_counts
from .stats import Z95, mcnemar_exact, wilson_interval
from .table import MaskingTable, write_rows_csv

__all__ = [
    "DEFAULT_MODES",
    "MAX_SEED",
    "MODES",
    "MaskAsPrompt",
    "MaskingTable",
    "Z95",
    "check_droppable",
    "check_fill",
    "check_generator",
    "check_image_ids",
    "check_labels",
    "check_plan",
    "check_seed",
    "check_selected",
    "drop_tokens",
    "evaluate_batch",
    "evaluate_masking",
    "mask_images",
    "masked_logits",
    "mcnemar_exact",
    "num_masked",
    "patch_scores",
    "random_scores",
    "random_selection",
    "read_logits",
    "scores_and_counts",
    "select_patches",
    "wilson_interval",
    "write_rows_csv",
]
