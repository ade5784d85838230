"""captum-sift analyze writes theta_heads.png (θ per head of the first image at one layer) and shows it."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from captum_sift import CaptumSiftError
from captum_sift.cli.heads import heads_layer
from captum_sift.cli.main import main


def test_analyze_on_the_embedded_default_draws_theta_per_head(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", "--out", str(out), "--limit", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    peak = int(np.nanargmax(np.array(report["layer_means"]["kk"], dtype=float)))
    page = (out / "index.html").read_text()
    assert '<img src="theta_heads.png"' in page and f"at layer {peak} (where the head-mean θ_KK peaks)" in page
    assert imread(out / "theta_heads.png").shape[0] > 100
    capsys.readouterr()
    depth = len(report["layers"])
    assert main(["analyze", "--out", str(tmp_path / "bad"), "--limit", "1", "--quiet", "--heads-layer", "99"]) == 2
    err = capsys.readouterr().err
    assert f"expected --heads-layer in [-{depth}, {depth}) (the model has {depth} blocks), got 99" in err
    assert err.count("\n") == 1 and not (tmp_path / "bad" / "report.json").exists()


def test_the_figure_layer_is_the_option_or_the_theta_kk_peak():
    def run(given):
        return SimpleNamespace(options=SimpleNamespace(heads_layer=given), vit=SimpleNamespace(depth=4))

    class Report:
        layers = [0, 1, 2, 3]

        def __init__(self, kk):
            self.kk = torch.tensor(kk)

        def layer_mean(self, name):
            return self.kk

    assert heads_layer(run(-1)) == 3 and heads_layer(run(2), Report([0.9, 0, 0, 0])) == 2
    assert heads_layer(run(None)) is None  # before the run: nothing to check
    assert heads_layer(run(None), Report([0.3, math.nan, 0.5, 0.4])) == 2  # NaN layers are no peak
    assert heads_layer(run(None), Report([math.nan] * 4)) == 3  # θ_KK nowhere defined: the last layer
    with pytest.raises(CaptumSiftError, match=r"--heads-layer in \[-4, 4\).*got -5"):
        heads_layer(run(-5))
