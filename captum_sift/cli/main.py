"""The ``captum-sift`` command (also ``python -m captum_sift``; runs under ``torchrun`` too).

Sub-commands:
    analyze     the patch-interrelation analysis -> a report folder (JSON, CSV, figures, index.html)
    mask-eval   Top / Bottom / Random masking "as prompts" -> accuracy table and figures
    compare     θ next to other attribution methods on faithfulness metrics
    pretrain    MAE pre-training with random or guided curriculum masking (SPEC §8)
    keypoints   SIFT keypoint counts per patch on sample photos (Fig. 3)

With no model or data option, analyze and mask-eval use the embedded default:
a small ViT trained on Fashion-MNIST and 1,000 test images shipped in the package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .._dist import finish
from ..errors import CaptumSiftError
from ..faithfulness import DEFAULT_METHODS, METHODS
from ..keypoints import DEFAULT_BACKEND
from ..theta.settings import CONTROL_CHOICES, KEYPOINT_BACKENDS
from .options import (
    AnalyzeOptions,
    CompareOptions,
    KeypointsOptions,
    MaskEvalOptions,
    PretrainOptions,
    check_combinations,
    one_line,
)

_DESCRIPTION = "The captum-sift command: explain Vision Transformers with SIFT keypoints and attention."
INTERRUPTED = "interrupted; resume with --resume"


class _UsageError(Exception):
    """A command-line error found by argparse (reported as one line, exit status 2)."""


class _Formatter(argparse.HelpFormatter):
    """Help that ends with the option's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if action.option_strings and shown and "%(default)" not in text:
            default = " ".join(map(str, action.default)) if isinstance(action.default, list) else "%(default)s"
            text += f" (default: {default})"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and every option's default in --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"captum-sift: error: {message} (see {self.prog} --help)")


def _folder(text: str) -> Path:
    """An output folder: a non-empty path (``''`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder path, got {text!r}")
    return Path(text)


def _path(text: str) -> Path:
    """An input path: non-empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return Path(text)


def _add_model_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=_folder, help="output folder (created if missing)")
    p.add_argument("--model", default=None,
                   help="a timm name, torchvision:NAME or hf:PATH_OR_ID (a save_pretrained folder; offline). "
                   "Random weights unless --weights or --pretrained (a warning says so)")  # fmt: skip
    p.add_argument("--weights", "--checkpoint", dest="weights", default=None, type=_path,
                   help="state dict for --model (or the default architecture); old alias: --checkpoint")  # fmt: skip
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="the library's own pretrained weights (timm, torchvision; needs them cached offline)",
    )
    p.add_argument(
        "--model-kwargs",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="constructor options, e.g. class_token=False global_pool=avg reg_tokens=4; for hf: config fields "
        "(loader options such as trust_remote_code are refused)",
    )
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="input mean per channel, or one value for every channel (default: the model's)")  # fmt: skip
    p.add_argument("--std", type=float, nargs="+", default=None,
                   help="input std per channel (> 0), or one for all channels (default: the model's)")  # fmt: skip
    p.add_argument(
        "--class-map",
        type=_path,
        default=None,
        help="JSON file {sub-folder name: class index} when folder order is not the model's classes (with --images)",
    )
    p.add_argument("--images", default=None, type=_path,
                   help="image folder (jpg/png/webp, labels from sub-folders; symbolic links followed)")  # fmt: skip
    p.add_argument("--data", choices=("embedded", "fashion-mnist-full"), default="embedded",
                   help="data without --images: the 1,000 shipped test images, or Debian's full test set")  # fmt: skip
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--gamma", type=float, default=1.0, help="detection-line height (eq. 2)")
    p.add_argument("--unweighted", action="store_true", help="unweighted θ (eq. 3, left)")
    p.add_argument("--backend", choices=KEYPOINT_BACKENDS, default=DEFAULT_BACKEND, help="keypoint backend")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--save-every",
        "--checkpoint-every",
        dest="save_every",
        type=int,
        default=5,
        help="save partial sums every N batches (for --resume); --checkpoint-every is an old alias",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captum-sift", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"captum-sift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    analyze = sub.add_parser("analyze", help="patch-interrelation analysis -> report folder")
    _add_model_data_options(analyze)
    analyze.add_argument("--heads-layer", type=int, default=None,
                         help="layer of theta_heads.png, θ per head of the first image (negative counts from the "
                         "end; default: where the head-mean θ_KK peaks)")  # fmt: skip
    analyze.add_argument("--controls", choices=CONTROL_CHOICES, default="fast",
                         help="null attentions computed with θ (SPEC §9): none; fast (uniform, locality per layer, "
                         "2 shuffled draws; default); all (locality per head, 8 draws)")  # fmt: skip
    mask = sub.add_parser("mask-eval", help="Top/Bottom/Random masking accuracy -> table and figures")
    _add_model_data_options(mask)
    mask.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4],
                      help="shares of the patches to mask, each in (0, 1)")  # fmt: skip
    mask.add_argument(
        "--modes",
        default="top,bottom,random",
        help="comma-separated among top,bottom,random,spurious (spurious: the lowest-θ Key patches, §5.1)",
    )
    mask.add_argument("--fill", default="0.0", help="masked patches become: a number (model space), mean, blur or drop")
    mask.add_argument("--seed", type=int, default=0, help="seed of the random mode")
    cmp = sub.add_parser("compare", help="θ next to other attribution methods on faithfulness metrics")
    _add_model_data_options(cmp)
    cmp.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated among {','.join(METHODS)}")
    cmp.add_argument("--steps", type=int, default=8, help="points of the deletion / insertion curves")
    cmp.add_argument(
        "--fill", default="0.0", help="what masked patches become: a number (model space), mean, blur, drop"
    )
    cmp.add_argument("--ig-steps", type=int, default=16, help="IntegratedGradients steps")
    cmp.add_argument("--no-quantus", action="store_true", help="skip Quantus's FaithfulnessCorrelation and MPRT")
    cmp.add_argument("--masks", default=None, type=_path,
                     help="folder of ground-truth masks of the --images files (images/a/1.jpg -> DIR/a/1.png, "
                     "one channel, the image's size, nonzero = inside): adds Quantus's localisation "
                     "metrics")  # fmt: skip
    cmp.add_argument(
        "--road",
        action="store_true",
        help="add ROAD (pytorch-grad-cam, percentiles 10..90: 18 sparse solves per image and method)",
    )
    cmp.add_argument("--quick", action="store_true",
                     help="16 images, 4 curve points, 4 IG steps: seconds on 2 idle CPU cores, where all 1,000 "
                     "embedded images take about 12 minutes (hours when other work shares the cores)")  # fmt: skip
    pre = sub.add_parser("pretrain", help="MAE pre-training with random or guided masking (Fig. 9)")
    pre.add_argument("--masking", choices=("guided", "random"), required=True, help="which patches are masked")
    pre.add_argument("--epochs", type=int, default=20, help="training epochs")
    pre.add_argument("--out", required=True, type=_folder, help="output folder: history.csv, checkpoint.pt")
    pre.add_argument("--data", choices=("embedded", "fashion-mnist-full"), default="embedded",
                     help="embedded: 800 of the shipped images to pre-train and probe, 200 to test the probe; "
                     "fashion-mnist-full: Debian's train set (--limit of them) and 2,000 test images")  # fmt: skip
    pre.add_argument("--limit", type=int, default=10000, help="training images of fashion-mnist-full")
    pre.add_argument("--img-size", type=int, default=112, help="side of the square training images")
    pre.add_argument("--patch-size", type=int, default=16, help="ViT patch size")
    pre.add_argument("--batch-size", type=int, default=128, help="global batch (divisible by the processes)")
    pre.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (warm-up, cosine decay)")
    pre.add_argument("--mask-ratio", type=float, default=0.75, help="share of patches masked, in (0, 1)")
    pre.add_argument("--schedule-every", type=int, default=10, help="epochs per step of the key share β")
    pre.add_argument("--probe-every", type=int, default=1, help="linear probe every N epochs")
    pre.add_argument("--seed", type=int, default=0, help="seed of the weights, order and masking noise")
    pre.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    pre.add_argument("--cache-dir", type=_folder, default=None, help="keypoint-count cache folder (default: --out)")
    pre.add_argument("--device", default="cpu", help="cpu or cuda")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    kp = sub.add_parser("keypoints", help="SIFT keypoint counts per patch on sample photos (Fig. 3)")
    kp.add_argument("--out", required=True, type=_folder, help="output folder (created if missing)")
    kp.add_argument("--photos", nargs="+", default=None, help="sample photo names (default: all shipped ones)")
    kp.add_argument("--img-size", type=int, default=224, help="side of the square images")
    kp.add_argument("--patch-size", type=int, default=16, help="ViT patch size")
    kp.add_argument("--backend", choices=KEYPOINT_BACKENDS, default=DEFAULT_BACKEND, help="keypoint detector")
    kp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


#: Each command: its typed options (built from the parsed arguments) and its module, whose run_<module> runs them.
COMMANDS: dict[str, tuple[Any, str]] = {
    "analyze": (AnalyzeOptions, "analyze"),
    "mask-eval": (MaskEvalOptions, "mask_eval"),
    "compare": (CompareOptions, "compare"),
    "pretrain": (PretrainOptions, "pretrain"),
    "keypoints": (KeypointsOptions, "keypoints"),
}
#: Commands whose partial results survive an interruption (the message says --resume).
RESUMABLE = frozenset({"analyze", "mask-eval", "compare", "pretrain"})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captum-sift`` console script: 0, or one line on stderr and 2 (130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        command = args.command
        check_combinations(args, _explicit(parser, argv, args.command))
        options_type, module = COMMANDS[command]
        options = options_type.from_args(args)
        # startup cost: the command modules import torchvision (seconds), which --help, --version and a bad
        # value answer without
        getattr(importlib.import_module(f".{module}", __package__), f"run_{module}")(options)
    except (_UsageError, CaptumSiftError) as exc:
        text = str(exc) if isinstance(exc, _UsageError) else f"captum-sift: error: {exc}"
        print(" ".join(text.split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"captum-sift: {INTERRUPTED if command in RESUMABLE else 'interrupted'}", file=sys.stderr)
        return 130
    except MemoryError:
        print("captum-sift: error: out of memory; use a smaller --batch-size, --img-size or --limit", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder that vanished, a file that cannot be written
        where = f" {exc.filename}" if exc.filename else ""
        reason = exc.strerror or one_line(exc) or type(exc).__name__
        print(f"captum-sift: error: cannot read or write{where}: {reason}", file=sys.stderr)
        return 2
    finally:
        finish()
    return 0


def _explicit(parser: argparse.ArgumentParser, argv: list[str], command: str) -> set[str]:
    """The destinations of the options given on the command line (abbreviations resolved as argparse does)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = subparsers.choices[command]._option_string_actions
    given = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        matches = [a for s, a in options.items() if s == name] or [a for s, a in options.items() if s.startswith(name)]
        if len({id(a) for a in matches}) == 1:
            given.add(matches[0].dest)
    return given


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
