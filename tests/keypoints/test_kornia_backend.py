"""backend="kornia": kornia's own scale-space detector with Lowe's contrast and edge tests; the name's FutureWarning."""

import warnings

import numpy as np
import pytest
import torch
from helpers import blob_image, ring_image

from captum_sift import CaptumSiftError, KeypointCounter, ThetaSettings, count_keypoints, detect_keypoints
from captum_sift.keypoints import BACKENDS, DEFAULT_BACKEND, params
from captum_sift.keypoints.params import KORNIA_MEANING


@pytest.fixture(autouse=True)
def _no_kornia_warning(request):
    """The rename's FutureWarning is tested on its own; elsewhere it would only be noise."""
    if "warn" in request.node.name:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="backend='kornia'", category=FutureWarning)
        yield


def test_kornia_backend_calls_kornias_scale_space_detector(monkeypatch):
    from kornia.feature import BlobDoG, ScaleSpaceDetector
    from kornia.geometry.subpix import ConvQuadInterp3d
    from kornia.geometry.transform import ScalePyramid

    calls = []
    for cls, name in ((ScaleSpaceDetector, "detect"), (BlobDoG, "forward"), (ConvQuadInterp3d, "forward"),
                      (ScalePyramid, "forward")):  # fmt: skip
        real = getattr(cls, name)

        def spy(self, *args, real=real, cls=cls, **kwargs):
            calls.append(cls.__name__)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    image = blob_image(64, (24.0, 40.0))
    kps = detect_keypoints(image, backend="kornia")[0]
    assert {"ScaleSpaceDetector", "BlobDoG", "ConvQuadInterp3d", "ScalePyramid"} <= set(calls)
    assert calls.count("ScalePyramid") == 1  # one pyramid; the detector then runs once per octave
    assert calls.count("ScaleSpaceDetector") == calls.count("BlobDoG") >= 2
    # the blob's centre (x 40, y 24) to within 0.01 px, its sigma ~2.2 input px (the blob's 2.5 / sqrt(~1.3))
    assert kps.shape == (1, 4)
    torch.testing.assert_close(kps[0, :2], torch.tensor([40.0, 24.0]), atol=0.01, rtol=0)
    assert 1.9 < float(kps[0, 2]) < 2.5 and float(kps[0, 3]) > 0.04 / 3


def test_kornia_contrast_threshold_and_edge_test():
    ring = ring_image()  # nothing but curved edges: kornia alone finds hundreds of extrema on it
    assert len(detect_keypoints(ring, backend="kornia")[0]) == 0
    assert len(detect_keypoints(ring, backend="kornia", edge_threshold=1e6)[0]) > 100
    faint = blob_image(64, (24.0, 40.0)) * 0.1  # |D| ~ 0.012 < 0.04 / 3
    assert len(detect_keypoints(faint, backend="kornia")[0]) == 0
    assert len(detect_keypoints(faint, backend="kornia", contrast_threshold=0.0)[0]) == 1


def test_kornia_counts_equal_binned_keypoints_and_batch_equals_singles():
    images = torch.cat([blob_image(64, (24.0, 40.0)), blob_image(64, (40.0, 20.0)), torch.zeros(1, 1, 64, 64)])
    kps = detect_keypoints(images, backend="kornia")
    batched = detect_keypoints(images, backend="kornia", chunk_size=3)
    assert [len(k) for k in kps] == [1, 1, 0]
    for a, b in zip(kps, batched, strict=True):
        torch.testing.assert_close(a, b)
    counts = count_keypoints(images, 16, backend="kornia")
    assert counts[0, 1, 2] == 1 and counts[1, 2, 1] == 1 and int(counts.sum()) == 2
    assert detect_keypoints(images.double(), backend="kornia")[0].dtype == torch.float64


def test_kornia_border_rule_is_kornias():
    """kornia keeps a detection whose half frame (3 sigma) lies 5 octave px inside the image; Lowe's rule is 5 px."""
    near_edge = blob_image(64, (50.0, 10.0))
    assert len(detect_keypoints(near_edge)[0]) == 1
    assert len(detect_keypoints(near_edge, backend="kornia")[0]) == 0


def test_kornia_refuses_precise_upscale():
    with pytest.raises(CaptumSiftError, match="precise_upscale=True"):
        detect_keypoints(torch.zeros(1, 1, 64, 64), backend="kornia", precise_upscale=True)


def test_kornia_agrees_with_opencv_on_photos():
    """Measured at 224 px, patch 16, per photo: Spearman rho 0.886 / 0.926, Key agreement 0.923 / 0.949."""
    pytest.importorskip("cv2")
    from scipy.stats import spearmanr

    from captum_sift.data import sample_images

    photos = sample_images(["astronaut", "camera"], size=224)
    ours = count_keypoints(photos, 16, backend="kornia")
    ref = count_keypoints(photos, 16, backend="opencv")
    for a, b in zip(ours.flatten(1).numpy(), ref.flatten(1).numpy(), strict=True):
        assert float(spearmanr(a, b).statistic) >= 0.85
        assert np.mean((a > 0) == (b > 0)) >= 0.9
        assert abs(int(a.sum()) - int(b.sum())) <= 0.1 * b.sum()


def test_backend_kornia_warns_once_per_process_and_lowe_never(monkeypatch):
    monkeypatch.setattr(params, "_WARNED", set())
    image = torch.zeros(1, 1, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        count_keypoints(image, 16)
        count_keypoints(image, 16, backend="lowe")
        KeypointCounter(16, backend="lowe")
    with pytest.warns(FutureWarning, match=r"backend='kornia' runs kornia's own scale-space detector; .*'lowe'"):
        count_keypoints(image, 16, backend="kornia")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detect_keypoints(image, backend="kornia")
        KeypointCounter(16, backend="kornia")
    assert "the default, is backend='lowe'" in KORNIA_MEANING


def test_lowe_is_the_default_everywhere():
    assert DEFAULT_BACKEND == "lowe" and BACKENDS == ("lowe", "kornia", "opencv")
    assert ThetaSettings().keypoint_backend == "lowe"
    assert KeypointCounter(16).backend == "lowe"
    image = blob_image(64, (24.0, 40.0))
    assert torch.equal(detect_keypoints(image)[0], detect_keypoints(image, backend="lowe")[0])
    with pytest.raises(CaptumSiftError, match=r"expected keypoint_backend in \('lowe', 'kornia', 'opencv'\)"):
        ThetaSettings(keypoint_backend="sift")
