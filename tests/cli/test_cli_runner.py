"""cli/runner.py: the output-folder lock, checkpoints and resume, the batch loop (no model needed)."""

import json

import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.cli.options import AnalyzeOptions
from captum_sift.cli.runner import Job, Run, batch_loop, conclude, digest, prepare_out, release_lock
from captum_sift.cli.sources import InMemory


class Sum:
    """The smallest accumulator: the float64 sum of every pixel and the number of images."""

    def __init__(self):
        self.total, self.images = torch.zeros((), dtype=torch.float64), 0

    def add(self, images):
        self.total += images.double().sum()
        self.images += images.shape[0]

    @property
    def num_images(self):
        return self.images

    def state_dict(self):
        return {"total": float(self.total), "images": self.images}

    def load_state_dict(self, state):
        self.total, self.images = torch.tensor(float(state["total"]), dtype=torch.float64), int(state["images"])

    def all_reduce(self, device):
        pass


def _run(out, *, resume=False, batches=((0, 1), (2, 3), (4,), (5, 6))):
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    source = InMemory(torch.rand(7, 1, 4, 4), torch.zeros(7, dtype=torch.long), "seven random images")
    options = AnalyzeOptions(out=out, batch_size=2, save_every=1, resume=resume, quiet=True)
    settings = {"data_fingerprint": source.fingerprint(), "batch_size": 2}
    return Run(options, 0, 1, None, source, "test", [list(b) for b in batches], settings=settings)


def _job(total, fail_at=None):
    calls = []

    def step(images, labels, read):
        calls.append(read)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        total.add(images)

    return Job(total, step, lambda skipped: None, "summed"), calls


def test_resume_after_an_interruption_gives_the_sums_of_one_pass(tmp_path):
    whole = Sum()
    batch_loop(_run(tmp_path / "whole"), _job(whole)[0])
    assert whole.images == 7
    assert float(whole.total) == pytest.approx(float(_run(tmp_path).source.images.double().sum()), abs=0)

    cut = tmp_path / "cut"
    first = Sum()
    with pytest.raises(KeyboardInterrupt):
        batch_loop(_run(cut), _job(first, fail_at=3)[0])  # batches 0 and 1 are saved, batch 2 is lost
    partial = json.loads((cut / ".partial-analyze-rank0-of-1.json").read_text())
    assert partial["sha256"] == digest(partial["state"]) and partial["state"]["batches_done"] == 2

    resumed = Sum()
    job, calls = _job(resumed)
    batch_loop(_run(cut, resume=True), job)
    assert calls == [[4], [5, 6]]  # only the batches not yet summed
    assert resumed.images == 7 and float(resumed.total) == float(whole.total)  # bit for bit


def test_resume_refuses_other_settings_and_a_damaged_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        batch_loop(_run(tmp_path), _job(Sum(), fail_at=2)[0])
    other = _run(tmp_path, resume=True)
    other.settings = {**other.settings, "batch_size": 3}
    with pytest.raises(CaptumSiftError, match=r"written by another run; these settings differ: \['batch_size'\]"):
        batch_loop(other, _job(Sum())[0])
    path = tmp_path / ".partial-analyze-rank0-of-1.json"
    document = json.loads(path.read_text())
    document["state"]["total"] += 1  # edited by hand
    path.write_text(json.dumps(document))
    with pytest.raises(CaptumSiftError, match="does not match its checksum"):
        batch_loop(_run(tmp_path, resume=True), _job(Sum())[0])


def test_a_lock_refuses_a_second_run_until_released(tmp_path):
    out = tmp_path / "out"
    lock = prepare_out(out)
    with pytest.raises(CaptumSiftError, match="is in use by another captum-sift run"):
        prepare_out(out)
    release_lock(lock)
    assert list(out.iterdir()) == []  # the lock file is removed
    release_lock(prepare_out(out))


def test_conclude_refuses_an_empty_run_and_removes_the_partial_sums(tmp_path):
    run = _run(tmp_path)
    batch_loop(run, _job(Sum())[0])
    with pytest.raises(CaptumSiftError, match="no image could be summed"):
        conclude(run, 0, "summed", [], lambda skipped: None)
    (tmp_path / "report.json").write_text("an earlier run's")
    written = []
    conclude(run, 7, "summed", [["a.jpg", "broken"]], written.append)
    assert written == [[["a.jpg", "broken"]]] and list(tmp_path.iterdir()) == []
