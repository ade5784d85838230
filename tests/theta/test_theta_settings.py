"""resolve_layers and ThetaSettings: the layer choice, the six θ options, their checks and their dict form."""

import numpy as np
import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.theta.settings import STAGE_NAMES, ThetaSettings, resolve_layers


@pytest.mark.parametrize(
    ("layers", "depth", "expected"),
    [
        (None, 4, [0, 1, 2, 3]),
        ([3, -1, -1], 5, [3, 4]),  # -1 is block 4: duplicates go, the result is sorted
        ([-5, 4], 5, [0, 4]),  # both ends of [-depth, depth)
        (np.int64(-2), 5, [3]),
        (torch.tensor(1), 3, [1]),
        (np.array([2, 0]), 3, [0, 2]),
        ((x for x in [2, 0]), 3, [0, 2]),
    ],
)
def test_resolve_layers(layers, depth, expected):
    assert resolve_layers(layers, depth) == expected


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([5], r"layer indices in \[-5, 5\) for a 5-block model, got 5"),
        ([-6], r"got -6"),
        ([], "at least one layer"),
        ([1.0], r"layer indices \(ints\), got 1.0"),
        ([True], r"layer indices \(ints\), got True"),
        (3.5, r"layer indices \(ints\) or a stage name, got 3.5"),
        ("capture", "stage name"),
    ],
)
def test_resolve_layers_refuses(layers, message):
    with pytest.raises(CaptumSiftError, match=message):
        resolve_layers(layers, 5)


def test_defaults_are_the_spec_s():
    s = ThetaSettings()
    assert (s.gamma, s.weighted, s.include_self, s.min_keypoints, s.layers, s.keypoint_backend) == (
        1.0, True, True, 1, None, "lowe"
    )  # fmt: skip


def test_numpy_and_tensor_values_become_python_ones():
    s = ThetaSettings(gamma=np.float32(2.0), min_keypoints=np.int64(2), layers=np.array([3, -1]))
    assert s.gamma == 2.0 and type(s.gamma) is float
    assert s.min_keypoints == 2 and type(s.min_keypoints) is int
    assert s.layers == (3, -1)
    assert ThetaSettings(layers=torch.tensor([0, 2])).layers == (0, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gamma": 0}, "gamma > 0, got 0"),
        ({"gamma": float("nan")}, "gamma > 0, got nan"),
        ({"gamma": True}, "gamma > 0, got True"),
        ({"min_keypoints": 0}, "min_keypoints to be an int >= 1, got 0"),
        ({"min_keypoints": 1.5}, "min_keypoints to be an int >= 1, got 1.5"),
        ({"weighted": 1}, "weighted to be True or False, got 1"),
        ({"include_self": None}, "include_self to be True or False, got None"),
        ({"keypoint_backend": "sift"}, r"keypoint_backend in \('lowe', 'kornia', 'opencv'\), got 'sift'"),
        ({"layers": "middle"}, "stage name in .*got 'middle'"),
        ({"layers": []}, "at least one layer"),
        ({"layers": [1.5]}, r"layer indices \(ints\), got 1.5"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(CaptumSiftError, match=message):
        ThetaSettings(**options)


def test_resolve_replaces_the_given_fields_only():
    base = ThetaSettings(gamma=2.0, weighted=False)
    s = ThetaSettings.resolve(base, layers=[3, -1])
    assert (s.gamma, s.weighted, s.layers) == (2.0, False, (3, -1))
    assert ThetaSettings.resolve(base) is base
    assert ThetaSettings.resolve(None, gamma=0.5) == ThetaSettings(gamma=0.5)
    with pytest.raises(CaptumSiftError, match=r"unknown θ option\(s\) \['gamm'\]"):
        ThetaSettings.resolve(base, gamm=1.0)
    with pytest.raises(CaptumSiftError, match="ThetaSettings, got dict"):
        ThetaSettings.resolve({"gamma": 1.0})
    with pytest.raises(CaptumSiftError, match="gamma > 0"):
        ThetaSettings.resolve(base, gamma=-1.0)  # the replaced fields are checked too


def test_dict_round_trip():
    for s in (ThetaSettings(), ThetaSettings(gamma=1.5, include_self=False, min_keypoints=3, layers=[4, -1]),
              ThetaSettings(layers="capture", keypoint_backend="opencv", controls="all")):  # fmt: skip
        data = s.to_dict()
        assert ThetaSettings(**data) == s
        assert isinstance(data["layers"], (list, str, type(None)))  # JSON-ready: no tuple
    assert ThetaSettings(layers=[4, -1]).to_dict() == {
        "gamma": 1.0, "weighted": True, "include_self": True, "min_keypoints": 1, "layers": [4, -1],
        "keypoint_backend": "lowe", "controls": "none",
    }  # fmt: skip


def test_layer_list_and_check_for_a_model_depth():
    assert ThetaSettings().layer_list(3) == [0, 1, 2]
    assert ThetaSettings(layers="coach").layer_list(4) == [0, 1, 2, 3]  # a stage needs every block
    assert ThetaSettings(layers=[-1, 0]).layer_list(4) == [0, 3]
    ThetaSettings(layers="retrieval").check_for(3)
    with pytest.raises(CaptumSiftError, match="at least 3 blocks for stage 'coach', got 2"):
        ThetaSettings(layers="coach").check_for(2)
    with pytest.raises(CaptumSiftError, match=r"in \[-4, 4\) for a 4-block model, got 7"):
        ThetaSettings(layers=[7]).check_for(4)
    assert STAGE_NAMES == ("retrieval", "capture", "coach")
