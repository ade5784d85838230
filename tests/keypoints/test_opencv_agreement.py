"""Agreement of the torch detector with OpenCV's SIFT on real photographs (SPEC §1)."""

import numpy as np
import pytest
import torch

from captum_sift import CaptumSiftError, count_keypoints, detect_keypoints
from captum_sift.data import sample_images

cv2 = pytest.importorskip("cv2")
PHOTOS = ["astronaut", "chelsea", "coffee", "camera"]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@pytest.fixture(scope="module")
def photos():
    return sample_images(PHOTOS, size=224)


@pytest.mark.parametrize("precise_upscale", [False, True])
def test_counts_agree_with_opencv(photos, precise_upscale):
    ours = count_keypoints(photos, 16, precise_upscale=precise_upscale)
    ref = count_keypoints(photos, 16, backend="opencv", precise_upscale=precise_upscale)
    for a, b in zip(ours.flatten(1).numpy(), ref.flatten(1).numpy(), strict=True):
        assert _spearman(a, b) >= 0.95
        assert np.mean((a > 0) == (b > 0)) >= 0.97


def test_locations_match_opencv_to_a_thousandth_of_a_pixel(photos):
    ours = detect_keypoints(photos)
    ref = detect_keypoints(photos, backend="opencv")
    for a, b in zip(ours, ref, strict=True):
        assert abs(len(a) - len(b)) <= max(3, 0.02 * len(b))
        dist = torch.cdist(b[:, :2].double(), a[:, :2].double()).min(1).values
        assert float((dist < 1e-2).float().mean()) >= 0.9
        # where both found the same location, the scales agree too
        nearest = torch.cdist(b[:, :2].double(), a[:, :2].double()).argmin(1)
        same = dist < 1e-2
        assert torch.allclose(a[nearest[same], 2].double(), b[same, 2].double(), rtol=1e-3)


def test_opencv_backend_without_opencv_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("No module named 'cv2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.raises(CaptumSiftError, match=r"pip install opencv-python-headless .*\.\[opencv\]"):
        count_keypoints(torch.zeros(1, 1, 32, 32), 16, backend="opencv")
