"""Reference backend: OpenCV's ``cv2.SIFT_create()`` (optional extra ``opencv``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import CaptumSiftError
from ._pyramid import to_gray255
from .params import SiftParams


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CaptumSiftError(
            "backend='opencv' needs OpenCV, which is not installed: pip install opencv-python-headless "
            "(from a clone of captum_sift: pip install -c constraints.txt '.[opencv]')"
        ) from exc
    return cv2


def detect_opencv(images: torch.Tensor, p: SiftParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Detect with OpenCV on the 8-bit gray image; one row per keypoint *location*.

    OpenCV repeats a location once per extra dominant orientation; those
    repeats (same x, y and size) are merged so that both backends count
    locations. Returns ``image_index`` (K,) and ``keypoints`` (K, 4) =
    x, y, sigma (= OpenCV's size / 2), response, on the images' device.
    """
    if not p.quantize:
        raise CaptumSiftError("backend='opencv' always sees an 8-bit image; got quantize=False")
    cv2 = _import_cv2()
    sift = cv2.SIFT_create(
        nOctaveLayers=p.n_octave_layers,
        contrastThreshold=p.contrast_threshold,
        edgeThreshold=p.edge_threshold,
        sigma=p.sigma,
        enable_precise_upscale=p.precise_upscale,
    )
    if not p.double_image:
        raise CaptumSiftError("backend='opencv' always doubles the image; got double_image=False")
    gray = to_gray255(images.detach().float(), quantize=True)[:, 0].to("cpu", torch.uint8).numpy()
    idx, rows = [], []
    for b, g in enumerate(gray):
        kps = sift.detect(np.ascontiguousarray(g), None)
        arr = np.array([[k.pt[0], k.pt[1], k.size / 2, k.response] for k in kps], dtype=np.float64)
        arr = arr.reshape(-1, 4)
        _, first = np.unique(arr[:, :3], axis=0, return_index=True)
        arr = arr[np.sort(first)]
        rows.append(arr)
        idx.append(np.full(len(arr), b, dtype=np.int64))
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    keypoints = torch.from_numpy(np.concatenate(rows)).to(images.device, dtype)
    image_index = torch.from_numpy(np.concatenate(idx)).to(images.device)
    return image_index, keypoints
