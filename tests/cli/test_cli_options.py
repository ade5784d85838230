"""cli/options.py: argv -> typed, frozen options of each command, every bad value one CaptumSiftError."""

import dataclasses
from pathlib import Path

import pytest
import torch

from captum_sift import CaptumSiftError, ThetaSettings
from captum_sift.cli.main import _explicit, _parser
from captum_sift.cli.options import (
    MAX_SEED,
    AnalyzeOptions,
    CompareOptions,
    KeypointsOptions,
    MaskEvalOptions,
    PretrainOptions,
    check_combinations,
    parse_fill,
)
from captum_sift.mae.pretrain import MAX_PRETRAIN_SEED as PRETRAIN_MAX_SEED

BUILD = {"analyze": AnalyzeOptions, "mask-eval": MaskEvalOptions, "compare": CompareOptions,
         "pretrain": PretrainOptions, "keypoints": KeypointsOptions}  # fmt: skip


def options(*argv):
    parser = _parser()
    args = parser.parse_args(list(argv))
    check_combinations(args, _explicit(parser, list(argv), args.command))
    return BUILD[args.command].from_args(args)


def test_analyze_options_are_typed_and_frozen():
    o = options("analyze", "--out", "o", "--model", "vit_tiny_patch16_224", "--model-kwargs", "depth=2",
                "global_pool=avg", "--mean", "0.5", "--std", "0.25", "--limit", "3", "--unweighted",
                "--gamma", "2")  # fmt: skip
    assert isinstance(o, AnalyzeOptions) and o.command == "analyze" and o.out == Path("o")
    assert o.model_kwargs == (("depth", 2), ("global_pool", "avg")) and o.mean == (0.5,) and o.std == (0.25,)
    assert o.limit == 3 and o.batch_size == 64 and o.save_every == 5 and o.img_size is None
    assert o.theta == ThetaSettings(gamma=2.0, weighted=False) and o.device == torch.device("cpu")
    assert o.own_settings() == {"controls": "fast"}  # the default: the controls within 1.3x of the analysis
    assert o.analysis == ThetaSettings(gamma=2.0, weighted=False, controls="fast")
    assert options("analyze", "--out", "o", "--controls", "all").analysis.controls == "all"
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.limit = 4


def test_mask_eval_options_keep_the_fill_text_and_parse_it():
    o = options("mask-eval", "--out", "o", "--ratios", "0.5", "0.25", "--modes", "top, random", "--fill", "1",
                "--seed", "7")  # fmt: skip
    assert (o.ratios, o.modes, o.fill, o.fill_value, o.seed) == ((0.5, 0.25), ("top", "random"), "1", 1.0, 7)
    assert o.own_settings() == {"ratios": [0.5, 0.25], "modes": ["top", "random"], "fill": "1", "seed": 7}
    assert options("mask-eval", "--out", "o", "--fill", "blur").fill_value == "blur"


def test_quick_is_applied_to_the_options_not_to_the_arguments():
    o = options("compare", "--out", "o", "--quick", "--methods", "theta,random")
    assert (o.limit, o.steps, o.ig_steps, o.methods, o.quantus) == (16, 4, 4, ("theta", "random"), True)
    assert options("compare", "--out", "o", "--quick", "--limit", "3").limit == 3
    plain = options("compare", "--out", "o", "--no-quantus")
    assert (plain.limit, plain.steps, plain.ig_steps, plain.quantus) == (None, 8, 16, False)
    assert plain.own_settings()["methods"] == list(CompareOptions.methods)


def test_pretrain_and_keypoints_options():
    o = options("pretrain", "--masking", "random", "--out", "o", "--img-size", "32", "--schedule-every", "3",
                "--seed", "5")  # fmt: skip
    assert isinstance(o, PretrainOptions) and o.config.masking == "random" and o.config.img_size == 32
    assert o.config.schedule["every"] == 3 and o.config.seed == 5 and o.limit == 10000 and o.cache == Path("o")
    assert options("pretrain", "--masking", "random", "--out", "o", "--cache-dir", "c").cache == Path("c")
    k = options("keypoints", "--out", "o", "--photos", "coffee", "moon", "--img-size", "64")
    assert (k.photos, k.img_size, k.patch_size, k.backend) == (("coffee", "moon"), 64, 16, "lowe")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze", "--limit", "0"], "expected --limit to be an int >= 1, got 0"),
        (["analyze", "--batch-size", "-2"], "expected --batch-size to be an int >= 1, got -2"),
        (["analyze", "--save-every", "0"], "expected --save-every to be an int >= 1, got 0"),
        (["analyze", "--std", "0"], "expected --std to be a finite number > 0, got 0.0"),
        (["analyze", "--gamma", "0"], "expected gamma > 0, got 0.0"),
        (["analyze", "--model-kwargs", "x"], "expected --model-kwargs as key=value"),
        (["analyze", "--device", "tpu"], "expected --device cpu, cuda or cuda:N, got 'tpu'"),
        (["mask-eval", "--seed", str(MAX_SEED + 1)], f"expected --seed to be an int >= 0 and <= {MAX_SEED}"),
        (["mask-eval", "--ratios", "1.5"], "ratio"),
        (["mask-eval", "--modes", "top,top"], "expected distinct --modes"),
        (["mask-eval", "--fill", "nan"], "expected --fill to be a finite number in [-1e+06, 1e+06], got 'nan'"),
        (["compare", "--methods", "theta,theta"], "expected distinct --methods among"),
        (["compare", "--steps", "0"], "expected --steps to be an int >= 1, got 0"),
        (["compare", "--ig-steps", "0"], "expected --ig-steps to be an int >= 1, got 0"),
        (["compare", "--quick", "--steps", "6"], "it cannot go with --steps"),
        (["pretrain", "--masking", "random", "--schedule-every", "0"], "expected --schedule-every to be an int >= 1"),
        (["pretrain", "--masking", "random", "--data", "fashion-mnist-full", "--limit", "0"], "--limit to be an int"),
        (
            ["pretrain", "--masking", "random", "--mask-ratio", "1"],
            "expected mask_ratio to be a finite number > 0 and < 1, got 1.0",
        ),
        (["keypoints", "--img-size", "60"], "multiples of patch_size=16"),
        (["keypoints", "--img-size", "0"], "expected --img-size to be an int >= 1, got 0"),
    ],
)
def test_bad_values_are_one_clear_error(argv, message):
    with pytest.raises(CaptumSiftError) as error:
        options(*argv[:1], "--out", "o", *argv[1:])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_one_seed_range_for_every_command():
    assert MAX_SEED == PRETRAIN_MAX_SEED == 2**30 - 1
    assert options("mask-eval", "--out", "o", "--seed", str(MAX_SEED)).seed == MAX_SEED


def test_parse_fill():
    assert [parse_fill(t) for t in ("mean", "drop", "-2.5", "1e6")] == ["mean", "drop", -2.5, 1e6]
    for bad in ("inf", "1e7", "x"):
        with pytest.raises(CaptumSiftError, match="--fill"):
            parse_fill(bad)
