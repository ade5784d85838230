"""Hostile command lines, files and environments: exit 0, or one line on stderr and exit 2 (issues 23, 25)."""

import errno
import json
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captum_sift import CaptumSiftError
from captum_sift.cli.main import main

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "1", "--quiet", "--model-kwargs",
        "depth=1"]  # fmt: skip


def _one_line_error(capsys, message):
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    return err


# -- 25.3: statistics ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--std", "inf"], "expected --std to be a finite number > 0, got inf"),
        (["--std", "0"], "expected --std to be a finite number > 0, got 0.0"),
        (["--std", "0.2", "-1", "0.2"], "expected --std to be a finite number > 0, got -1.0"),
        (["--mean", "nan"], "expected --mean to be a finite number, got nan"),
    ],
)
def test_bad_statistics_are_refused_at_parse_time(tmp_path, capsys, args, message):
    assert main(["analyze", "--out", str(tmp_path / "out"), *args]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "out").exists()


# -- 25.6: resume with another number of processes -------------------------------------------------
def test_resume_with_another_number_of_processes_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".partial-analyze-rank1-of-2.json"
    stale.write_text("{}")
    args = ["analyze", "--out", str(out), *TINY, "--limit", "1"]
    assert main([*args, "--resume"]) == 2
    _one_line_error(capsys, "were written by 2 process(es), this run has 1")
    assert main(args) == 0  # a fresh run starts over and removes the other run's partial sums
    assert not list(out.glob(".partial-*"))


# -- 25.7: options ignored without a word ------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "--quick", "--steps", "6"], "it cannot go with --steps"),
        (["compare", "--quick", "--limit", "100"], "it cannot go with --limit > 16"),
        (["analyze", "--images", "IMAGES", "--data", "embedded"], "give one of them, not both"),
        (["mask-eval", "--class-map", "map.json"], "--class-map maps the sub-folders of --images"),
        (["pretrain", "--masking", "random", "--limit", "5"], "--limit counts the training images"),
    ],
)
def test_options_that_would_be_ignored_are_refused(tmp_path, capsys, image_folder, args, message):
    args = [str(image_folder) if a == "IMAGES" else a for a in args]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, message)


@pytest.mark.parametrize("command", ["analyze", "mask-eval", "compare", "keypoints", "pretrain"])
def test_empty_out_is_refused(tmp_path, capsys, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--masking", "random"] if command == "pretrain" else []
    assert main([command, *extra, "--out", ""]) == 2
    _one_line_error(capsys, "argument --out: expected a folder path, got ''")
    assert list(tmp_path.iterdir()) == []


def test_analyze_into_a_mask_eval_folder_removes_its_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("mask_eval.csv", "mask_eval.png", "masked_examples.png", "compare.json"):
        (out / name).write_text("stale")
    assert main(["analyze", "--out", str(out), *TINY, "--limit", "1"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "report.json" in names and not names & {"mask_eval.csv", "mask_eval.png", "masked_examples.png",
                                                    "compare.json"}  # fmt: skip
    page = (out / "index.html").read_text()  # 23.16: the data files are links
    assert '<a href="report.json">report.json</a>' in page and '<a href="per_layer_head.csv">' in page


# -- 25.9: keypoints -----------------------------------------------------------------------------------
def test_keypoints_command_refuses_a_file_out_and_bad_devices(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    base = ["keypoints", "--photos", "coffee", "--img-size", "32"]
    assert main([*base, "--out", str(afile)]) == 2
    _one_line_error(capsys, "exists and is not a folder")
    assert main([*base, "--out", str(tmp_path / "o"), "--device", "bogus"]) == 2
    _one_line_error(capsys, "expected --device cpu, cuda or cuda:N, got 'bogus'")
    if not torch.cuda.is_available():
        assert main([*base, "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
        _one_line_error(capsys, "CUDA is not available")


# -- 25.10: overflow -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mask-eval", "--fill", "1e39"], "expected --fill to be a finite number in [-1e+06, 1e+06], got '1e39'"),
        (["mask-eval", "--fill", "nan"], "expected --fill to be a finite number"),
        (["mask-eval", "--seed", str(2**64)], "expected --seed to be an int >= 0"),
        (
            ["pretrain", "--masking", "random", "--seed", str(2**64)],
            "expected seed to be an int >= 0 and <= 1073741823",
        ),
        (["analyze", *TINY[:-1], "depth=0"], "expected a model with at least one attention block"),
    ],
)
def test_overflowing_numbers_are_one_line(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, message)


def test_pretrain_with_a_huge_learning_rate_stops_on_the_first_non_finite_loss(tmp_path, capsys):
    args = ["pretrain", "--masking", "random", "--out", str(tmp_path / "out"), "--img-size", "32", "--epochs", "1",
            "--batch-size", "100", "--lr", "1e10", "--quiet"]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, "the loss became")
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


# -- 25.11: sizes ---------------------------------------------------------------------------------------
@pytest.fixture
def eight_gib(monkeypatch):
    from captum_sift.data import memory

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 8 * 2**30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "--img-size", "10000", "--limit", "1"], "a batch of 1 images at 10000 px (390626 tokens)"),
        (["pretrain", "--masking", "random", "--img-size", "4000"], "pre-training on 1000 images at --img-size 4000"),
        (["keypoints", "--img-size", "20000"], "10 photos at --img-size 20000 needs about 522 GiB of memory"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_with_the_figure(tmp_path, capsys, eight_gib, args, message):
    import time

    start = time.perf_counter()
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "8 GiB is free" in _one_line_error(capsys, message)
    assert time.perf_counter() - start < 30


def test_sample_images_refuses_a_size_that_cannot_fit(eight_gib):
    with pytest.raises(CaptumSiftError, match=r"needs about 1.68e\+03 GiB of memory, 8 GiB is free"):
        from captum_sift.data import sample_images

        sample_images(size=100000)


def test_limit_applies_before_the_embedded_data_is_resized(tmp_path):
    from captum_sift.cli.loading import load_model
    from captum_sift.cli.options import AnalyzeOptions
    from captum_sift.cli.sources import load_data

    options = AnalyzeOptions(out=tmp_path, limit=3, img_size=64)
    source, _ = load_data(options, load_model(options))
    assert tuple(source.images.shape) == (3, 1, 64, 64)


# -- 25.12: environment ----------------------------------------------------------------------------------
def _full_disk(monkeypatch):
    real = os.replace

    def replace(src, dst):
        if "history.csv" in str(dst) or str(dst).endswith((".json", ".csv", ".pt", ".html")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", *TINY, "--limit", "1"],
        ["keypoints", "--photos", "coffee", "--img-size", "32"],
        ["pretrain", "--masking", "random", "--img-size", "32", "--epochs", "1", "--batch-size", "400"],
    ],
)
def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch, args):
    _full_disk(monkeypatch)
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), "--quiet"] if args[0] != "keypoints" else [*args, "--out", str(out)]) == 2
    _one_line_error(capsys, "No space left on device")
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_pretrain_cache_dir_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["pretrain", "--masking", "random", "--out", str(tmp_path / "o"), "--cache-dir", str(afile)]) == 2
    _one_line_error(capsys, "--cache-dir")


# -- 25.13: damaged partial-sum, checkpoint and keypoint-cache files ---------------------------------------
def _partial(out, state):
    from captum_sift.cli.runner import digest

    (out / ".partial-analyze-rank0-of-1.json").write_text(json.dumps({"state": state, "sha256": digest(state)}))


def test_damaged_partial_files_are_one_line(tmp_path, capsys, monkeypatch):
    from captum_sift.cli import runner

    out = tmp_path / "out"
    args = ["analyze", "--out", str(out), *TINY, "--limit", "2", "--save-every", "1"]
    with monkeypatch.context() as m:
        m.setattr(runner, "finish", lambda run: None)
        assert main(args) == 0
    path = out / ".partial-analyze-rank0-of-1.json"
    good = json.loads(path.read_text())["state"]
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert main([*args, "--resume"]) == 2
    _one_line_error(capsys, "is damaged (RecursionError)")
    for edit in (
        lambda s: s["report"]["sums"].update(kk=[[1e300] * 3]),
        lambda s: s["report"].update(num_heads=float("inf")),
        lambda s: s["report"].update(num_images=1e400),
    ):
        state = json.loads(json.dumps(good))
        edit(state)
        _partial(out, state)
        assert main([*args, "--resume"]) == 2
        _one_line_error(capsys, "--resume:")


def test_damaged_keypoint_cache_is_refused(tmp_path):
    from captum_sift.mae.pretrain import cached_keypoint_counts

    images = torch.zeros(2, 1, 32, 32)
    cached_keypoint_counts(images, 16, tmp_path, "x")
    (path,) = tmp_path.glob("keypoints-*.pt")
    torch.save(torch.full((2, 4), float("nan")), path)
    with pytest.raises(CaptumSiftError, match="integer counts >= 0; delete it"):
        cached_keypoint_counts(images, 16, tmp_path, "x")


# -- 23.15: help, version ----------------------------------------------------------------------------------
def test_help_shows_defaults_and_version(capsys):
    for command, options in (("mask-eval", ["--batch-size", "--ratios"]), ("pretrain", ["--epochs", "--lr"])):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]
        for option in options:
            line = text.split(option + " ", 1)[1].split(" --", 1)[0]
            assert "(default: " in line, (option, line)
        assert "--help" in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("captum-sift ")


# -- 25 done-when: every command through main([...]) with hostile values -----------------------------------
NUMBERS = st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e39", str(2**64), "x", "", "1.5", "2", "1e-300"])
# input paths only, and relative ones land in a fresh folder: as root, an --out of "/" would write there
PATHS = st.sampled_from(["", " ", "/", "/dev/null", "/nonexistent/x", "a\x7fb", "-", "~", ".", "x" * 300])
CACHE_PATHS = st.sampled_from(["", " ", "/dev/null", "a\x7fb", "-", ".", "x" * 300])
OPTIONS = {
    "analyze": ["--limit", "--img-size", "--batch-size", "--gamma", "--mean", "--std", "--save-every", "--heads-layer"],
    "mask-eval": ["--limit", "--ratios", "--fill", "--seed", "--batch-size", "--img-size"],
    "compare": ["--limit", "--fill", "--img-size", "--batch-size"],
    "keypoints": ["--img-size", "--patch-size"],
    "pretrain": ["--epochs", "--lr", "--mask-ratio", "--seed", "--img-size", "--batch-size", "--patch-size"],
}
PATH_OPTIONS = {"analyze": ["--images", "--weights"], "mask-eval": ["--images"], "keypoints": ["--photos"],
                "pretrain": ["--cache-dir"]}  # fmt: skip
BASE = {
    "analyze": ["--limit", "2", "--img-size", "32", "--model", "vit_tiny_patch16_224", "--model-kwargs", "depth=1"],
    "mask-eval": ["--limit", "2", "--img-size", "32", "--model", "vit_tiny_patch16_224", "--ratios", "0.5"],
    "compare": ["--quick", "--limit", "2", "--img-size", "32", "--no-quantus", "--methods", "theta,random"],
    "keypoints": ["--photos", "coffee", "--img-size", "32"],
    "pretrain": ["--masking", "random", "--img-size", "32", "--epochs", "1", "--batch-size", "400"],
}


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_values_give_exit_0_or_one_line(tmp_path_factory, data):
    import contextlib
    import io

    command = data.draw(st.sampled_from(sorted(OPTIONS)))
    folder = tmp_path_factory.mktemp("hostile")
    argv = [command, "--out", str(folder / "o"), *BASE[command]] + ([] if command == "keypoints" else ["--quiet"])
    for option in data.draw(
        st.lists(
            st.sampled_from(OPTIONS[command] + PATH_OPTIONS[command])
            if command in PATH_OPTIONS
            else st.sampled_from(OPTIONS[command]),
            min_size=1,
            max_size=2,
        )
    ):
        paths = CACHE_PATHS if option == "--cache-dir" else PATHS
        argv += [option, data.draw(paths if option in PATH_OPTIONS.get(command, []) else NUMBERS)]
    err, cwd = io.StringIO(), os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's --help / --version only; errors are returned
                code = exc.code
    finally:
        os.chdir(cwd)
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    assert code == 0 or (code == 2 and text.count("\n") == 1 and text.startswith("captum-sift: ")), (argv, code, text)
