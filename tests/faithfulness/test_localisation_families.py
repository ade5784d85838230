"""Localisation and ROAD on one network as a timm, torchvision and Hugging Face model: the same values."""

import math

import numpy as np
import pytest
import torch
from family_models import families, pixels, timm_vit  # noqa: F401 - the three families' fixtures

from captum_sift.faithfulness import (
    LOCALISATION_METRICS,
    compare,
    explain,
    localisation_scores,
    patch_attribution,
    road_scores,
)
from captum_sift.vit.adapter import as_vit

pytest.importorskip("quantus")
pytest.importorskip("pytorch_grad_cam")


def test_the_three_families_give_one_localisation_and_one_road(families, pixels):  # noqa: F811 - fixtures
    """One network as timm, torchvision and Hugging Face models: compare's rows are each family's own scores'
    (the pointing game flips on near-ties of float noise, so the continuous relevance mass is compared across
    families) and ROAD runs on each adapter."""
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:16, 8:24] = True  # patches 5 and 6 of the 4 x 4 grid
    patch = torch.zeros(3, 16, dtype=torch.bool)
    patch[:, [5, 6]] = True
    labels = torch.tensor([0, 1, 2])
    mass, roads = {}, {}
    for name, model in families.items():
        vit = as_vit(model)
        mean, std = vit.stats(pixels)
        x = (pixels - mean) / std
        table = compare(vit, x, labels, methods=("rollout",), masks=masks, steps=2, quantus_metrics=False,
                        timing_rounds=0, progress=False).values["rollout"]  # fmt: skip
        scores = patch_attribution(explain("rollout", vit, x, labels), 8)
        expected = localisation_scores(scores, patch)
        for metric in LOCALISATION_METRICS:
            np.testing.assert_allclose(table[metric], expected[metric], rtol=1e-6, err_msg=f"{name} {metric}")
        mass[name] = table["relevance_mass_accuracy"]
        roads[name] = road_scores(vit, x, labels, scores, percentiles=(50,))
        assert all(math.isfinite(v) for v in roads[name]), name
    for name in ("torchvision", "hf"):
        np.testing.assert_allclose(mass[name], mass["timm"], rtol=1e-2, err_msg=name)  # the maps differ by ~0.3 %
