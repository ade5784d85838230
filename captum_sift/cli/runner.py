"""The one loop of analyze, mask-eval and compare: output-folder lock, resume, checkpoints, batches, reduction.

One process or many (``torchrun``): each rank takes every world-th image,
checkpoints its partial sums every few batches (``--resume`` continues from
them and ends with exactly the numbers of an uninterrupted run), the sums are
reduced across ranks, and rank 0 writes the outputs.

A command gives :func:`execute` a :class:`Job`: its accumulator (``state_dict``,
``load_state_dict``, ``all_reduce``, ``num_images``), the step that adds one
batch to it, and the writer of its outputs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from tqdm.auto import tqdm

from .. import __version__
from .._dist import all_gather_objects, barrier, init_from_env
from .._io import write_text_atomic
from ..data import ImageFolder, sha256_file
from ..errors import CaptumSiftError
from ..vit.adapter import ViTAdapter
from .folder import clear_outputs
from .loading import RANDOM_WARNING, LoadedModel, load_model
from .options import RunOptions
from .sources import InMemory, load_data

__all__ = ["Accumulator", "Job", "Run", "execute", "on_every_rank", "prepare_out", "release_lock", "setup"]


class Accumulator(Protocol):
    """What a command sums over the batches of one rank, then over the ranks."""

    def state_dict(self) -> dict[str, Any]:
        """The partial sums as JSON values (saved with the checkpoint)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (checked: an error names what is wrong)."""

    def all_reduce(self, device: torch.device) -> None:
        """Sum over every rank; afterwards every rank holds the whole."""

    @property
    def num_images(self) -> int:
        """Images summed so far."""


@dataclass
class Job:
    """What one command gives the loop."""

    total: Accumulator
    step: Callable[[torch.Tensor, torch.Tensor, list[int]], None]  # (pixels on the device, labels, indices read)
    write: Callable[[list[list[str]]], None]  # rank 0, after the reduction; gets the skipped files
    done: str  # "analysed": what no image could be, in the error of an empty run


@dataclass
class Run:
    """One run of a command: its options, this rank, the model, the data and this rank's batches."""

    options: RunOptions
    rank: int
    world: int
    loaded: LoadedModel
    source: InMemory | ImageFolder
    data_name: str
    batches: list[list[int]]
    lock: IO[str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # what a resumed run must share with this one
    warnings: list[str] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.options.device

    @property
    def vit(self) -> ViTAdapter:
        return self.loaded.vit

    @property
    def out(self) -> Path:
        return self.options.out

    def first_images(self, n: int = 8) -> torch.Tensor:
        """Up to ``n`` readable images of this rank's first batch (for the example figures)."""
        first = self.batches[0] if self.batches else []
        images, *_ = self.source.load(first[:n])
        return images

    def all_warnings(self) -> list[str]:
        return ([RANDOM_WARNING] if self.loaded.random_weights else []) + self.warnings

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one (also report.json's settings)."""
        o = self.options
        settings = {
            "model": self.loaded.name, "model_kwargs": [list(kv) for kv in o.model_kwargs],
            "weights_sha256": sha256_file(o.weights) if o.weights else None,
            "random_weights": self.loaded.random_weights, "model_files_sha256": self.loaded.files_sha256,
            "data": self.data_name, "data_fingerprint": self.source.fingerprint(), "images": len(self.source),
            "class_map": [list(kv) for kv in o.class_map] if o.class_map else None,
            "img_size": self.source.size, "limit": o.limit,
            "batch_size": o.batch_size, "gamma": o.theta.gamma, "weighted": o.theta.weighted,
            "backend": o.theta.keypoint_backend, "mean": list(self.vit.mean), "std": list(self.vit.std),
            "world_size": self.world, "captum_sift": __version__,
        }  # fmt: skip
        return settings | o.own_settings()

    def release(self) -> None:
        """Release the output folder's lock (after success or failure)."""
        if self.lock is not None and not self.lock.closed:
            release_lock(self.lock)


def prepare_out(out: Path, rank: int = 0) -> IO[str]:
    """Create ``out`` (checked writable before any work) and lock it for this rank; -> the open lock file."""
    if out.exists() and not out.is_dir():
        raise CaptumSiftError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CaptumSiftError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from exc
    lock = open(out / f".lock-rank{rank}", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise CaptumSiftError(f"the output folder {out} is in use by another captum-sift run") from None
    return lock


def release_lock(lock: IO[str]) -> None:
    """Close a lock file of :func:`prepare_out` and remove it."""
    lock.close()
    Path(lock.name).unlink(missing_ok=True)


def on_every_rank(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank; if it raised CaptumSiftError on any, every rank raises that one message.

    So that under torchrun a bad input ends every process with the same line
    instead of leaving the others to die on a closed connection.
    """
    try:
        result, message = fn(), None
    except CaptumSiftError as exc:
        result, message = None, str(exc)
    message = next((m for m in all_gather_objects(message) if m), None)
    if message:
        raise CaptumSiftError(message)
    return result


def setup(options: RunOptions) -> Run:
    """Lock --out, load the model and the data, and deal this rank its batches (every rank, or none, fails)."""
    rank, world = init_from_env(options.device)

    def build() -> Run:
        lock = prepare_out(options.out, rank)
        try:
            loaded = load_model(options)
            loaded.vit.model.to(options.device)
            source, data_name = load_data(options, loaded)
        except BaseException:
            lock.close()
            raise
        indices = list(range(len(source)))[: options.limit]
        shard = indices[rank::world]  # every image on exactly one rank
        batches = [shard[i : i + options.batch_size] for i in range(0, len(shard), options.batch_size)]
        return Run(options, rank, world, loaded, source, data_name, batches, lock)

    run = on_every_rank(build)
    if run.loaded.random_weights and rank == 0:
        print(RANDOM_WARNING, flush=True)
    return run


def execute(options: RunOptions, job_of: Callable[[Run], Job]) -> None:
    """Set up, resume, run every batch, reduce over the ranks and write: the whole of one command."""
    run = setup(options)
    try:
        run.settings = run.fingerprint()
        job = job_of(run)
        skipped = batch_loop(run, job)
        job.total.all_reduce(run.device)
        conclude(run, job.total.num_images, job.done, skipped, job.write)
    finally:
        run.release()


# -- checkpoints ---------------------------------------------------------------------------------------
def partial_files(options: RunOptions) -> list[Path]:
    """The partial-sum files of this command in --out, of any number of processes."""
    pattern = re.compile(rf"\.partial-{re.escape(options.command)}-rank\d+-of-\d+\.json")
    return [p for p in options.out.glob(f".partial-{options.command}-rank*") if pattern.fullmatch(p.name)]


def partial_path(run: Run) -> Path:
    return run.out / f".partial-{run.options.command}-rank{run.rank}-of-{run.world}.json"


def digest(state: dict[str, Any]) -> str:
    """The checksum a partial-sum file holds of its state."""
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def save_partial(run: Run, state: dict[str, Any]) -> None:
    write_text_atomic(partial_path(run), json.dumps({"state": state, "sha256": digest(state)}))


def load_partial(run: Run, settings: dict[str, Any], total: Accumulator) -> dict[str, Any] | None:
    """The partial state of an interrupted run (``--resume``), fully checked and loaded into ``total``."""
    path = partial_path(run)
    if not run.options.resume:
        return None
    others = sorted({int(p.name.rsplit("-of-", 1)[1][:-5]) for p in partial_files(run.options)} - {run.world})
    if others and not path.exists():
        raise CaptumSiftError(
            f"--resume: the partial sums in {run.out} were written by {others[0]} process(es), this run has "
            f"{run.world}; resume with {others[0]} (torchrun --nproc_per_node {others[0]}) or run without --resume"
        )
    if not path.exists():
        return None
    advice = f"delete {path} or run without --resume to start fresh"
    try:
        document = json.loads(path.read_text())
        state = document["state"]
        damaged = document["sha256"] != digest(state)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, RecursionError,
            OverflowError, ValueError) as exc:  # fmt: skip
        raise CaptumSiftError(f"--resume: {path} is damaged ({type(exc).__name__}); {advice}") from exc
    if damaged:
        raise CaptumSiftError(f"--resume: {path} does not match its checksum (damaged or edited); {advice}")
    old = state.get("settings") if isinstance(state, dict) else None
    if not isinstance(old, dict):
        raise CaptumSiftError(f"--resume: {path} holds no settings; {advice}")
    if old != settings:
        differ = sorted(k for k in set(settings) | set(old) if settings.get(k) != old.get(k))
        raise CaptumSiftError(f"--resume: {path} was written by another run; these settings differ: {differ}")
    done = state.get("batches_done")
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= len(run.batches):
        raise CaptumSiftError(f"--resume: {path} has batches_done={done!r}, not in [0, {len(run.batches)}]; {advice}")
    if not isinstance(state.get("skipped"), list):
        raise CaptumSiftError(f"--resume: {path} has no list of skipped files; {advice}")
    try:
        total.load_state_dict(state)
    except (CaptumSiftError, KeyError, TypeError, ValueError, OverflowError, RecursionError, IndexError) as exc:
        raise CaptumSiftError(f"--resume: {path} holds invalid partial results ({exc}); {advice}") from exc
    return state


# -- the loop ------------------------------------------------------------------------------------------
def batch_loop(run: Run, job: Job) -> list[list[str]]:
    """Resume, run the step on every batch of this rank, save partial sums every few batches; -> skipped files."""
    settings = run.settings
    partial = on_every_rank(lambda: load_partial(run, settings, job.total))
    done, skipped = (partial["batches_done"], partial["skipped"]) if partial else (0, [])
    bar = tqdm(total=len(run.batches), initial=done, desc=run.options.command, unit="batch",
               disable=run.options.quiet or not run.main)  # fmt: skip

    def loop() -> None:
        nonlocal skipped
        for b in range(done, len(run.batches)):
            images, labels, read, bad = run.source.load(run.batches[b])
            skipped += [list(item) for item in bad]
            if images.shape[0]:
                job.step(images.to(run.device), labels, read)
            bar.update(1)
            if (b + 1) % run.options.save_every == 0 or b + 1 == len(run.batches):
                save_partial(run, {"settings": settings, "batches_done": b + 1, "skipped": skipped,
                                   **job.total.state_dict()})  # fmt: skip

    try:
        on_every_rank(loop)  # an error on one rank ends every rank with its message
    finally:
        bar.close()
    return skipped


def conclude(run: Run, images: int, done: str, skipped: list[list[str]], write: Callable[[list], None]) -> None:
    """After the reduction, on every rank: refuse an empty run, gather the skipped files, rank 0 writes."""
    if images == 0:  # the same on every rank after the reduction, so no rank is left waiting
        raise CaptumSiftError(f"no image could be {done} (all were unreadable or the selection is empty)")
    skipped = [item for part in all_gather_objects(skipped) for item in part]
    if run.main:
        clear_outputs(run.out)
        write(skipped)
    barrier()
    finish(run)


def finish(run: Run) -> None:
    """After a successful run: remove this rank's partial sums (kept after a failure, for --resume);
    rank 0 also removes those of an earlier run with another number of processes."""
    partial_path(run).unlink(missing_ok=True)
    if run.main:
        for path in partial_files(run.options):
            path.unlink(missing_ok=True)
