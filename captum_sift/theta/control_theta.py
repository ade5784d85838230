"""The controls of SPEC §9 inside the analysis' streamed pass, and their excess over images.

:class:`ControlPass` is set up once per batch from the counts; per layer it turns the real map (while
:func:`~captum_sift.theta.analysis.analyze` holds it) into θ_KK and θ_NK of each control, with the same
eqs. 2-4 and the same counts as the real θ:

- **uniform**: α_ij = 1/N attends every patch (γ <= 1), so θ_i is the image's Key share (minus patch i
  itself without ``include_self``); the same for every layer and head.
- **locality**: the layer's and head's mean profile f(d) over grid distance, fitted per image
  (:func:`~captum_sift.theta.controls.locality_attention`). Its S_i is a set of whole distance classes
  {d : f(d) >= γ · mean_j f(d(i, j))}, so θ is summed per class instead of per patch: the same numbers as
  :func:`~captum_sift.theta.functional.patch_theta` on the materialised control, with one pass over the map.
- **shuffled**: the real S_i with each of K rolled count grids
  (:func:`~captum_sift.theta.controls.shuffled_counts`); their weights ride along in the real θ's product,
  and each draw's classes use its own counts. The draws are averaged per image.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..errors import CaptumSiftError
from .controls import Excess, distance_classes, excess, excess_verdict, joint_verdict, shuffled_counts
from .functional import interrelation, theta_weights

__all__ = ["CONTROLS", "CONTROL_LEVELS", "MIN_EXCESS", "ControlPass", "control_excess", "control_verdicts"]

#: The three null attentions of SPEC §9, in report order.
CONTROLS = ("uniform", "locality", "shuffled")
#: What each ``ThetaSettings.controls`` level computes: (controls, shuffled draws, locality fitted per head).
#: ``"fast"`` fits one locality profile per layer (the heads' renormalised rows averaged), so its control
#: is the same for every head of a layer; ``"all"`` fits one per layer and head as SPEC §9 writes.
CONTROL_LEVELS: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "none": ((), 0, False),
    "fast": (CONTROLS, 2, False),
    "all": (CONTROLS, 8, True),
}
#: Effect-size floor of the verdict lines: an excess below it is not called one, whatever its p-value.
#: Random-weight ViTs (timm, torchvision, HF x 3 seeds, 40 photo crops) reach excesses of up to 0.069 over
#: the locality control and 0.039 over the shuffled one at p < 0.01 (softmax attention favours textured,
#: high-norm tokens even untrained); an attention pulled to Key patches beyond locality gives 0.16-0.38.
MIN_EXCESS = 0.1
#: Relative slack of the locality control's detection line: a flat profile attends every distance, as
#: α_ij = 1/N does in exact arithmetic, instead of none by a float64 rounding.
_TIE = 1e-9


@functools.lru_cache(maxsize=8)
def _distance_layout(grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of one grid: every pair's distance class (N * N,), the patches at each class from each patch (N, D)
    float64, and every pair's (row, class) slot i * D + class (N * N,)."""
    classes, num = distance_classes(*grid, device=device)
    n = classes.shape[0]
    row_class = (torch.arange(n, device=device)[:, None] * num + classes).flatten()
    per_row = torch.bincount(row_class, minlength=n * num).view(n, num).double()
    return classes.flatten(), per_row, row_class


class ControlPass:
    """The controls' θ_KK and θ_NK for one batch: set up once from its counts, then per map :meth:`profile`
    (before the map's S_i overwrites the scratch buffer) and :meth:`add_layer`; :meth:`classes` at the end."""

    def __init__(
        self,
        counts: torch.Tensor,
        grid: tuple[int, int],
        weights: torch.Tensor,
        settings: Any,
        image_ids: torch.Tensor,
    ) -> None:
        self.names, self.draws, self.per_head = CONTROL_LEVELS[settings.controls]
        self.layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []  # what add_layer measured
        self.counts, self.gamma, self.min_keypoints = counts, settings.gamma, settings.min_keypoints
        self.include_self = settings.include_self
        batch, n = counts.shape
        device = counts.device
        if "shuffled" in self.names:
            rolled = shuffled_counts(counts.cpu(), grid, image_ids.cpu(), draws=self.draws).to(device)  # (K, B, N)
            self.rolled = rolled.flatten(0, 1)
            drawn = theta_weights(self.rolled.float(), weighted=settings.weighted, min_keypoints=self.min_keypoints)
            # (K * B, 1, N, 2) -> (B, 1, N, 2K): draw k in columns 2k, 2k + 1
            self.extra = drawn.view(self.draws, batch, 1, n, 2).permute(1, 2, 3, 0, 4).reshape(batch, 1, n, -1)
        else:
            self.extra = weights.new_zeros(batch, 1, n, 0)
        if "locality" in self.names:
            self.flat, self.per_row, row_class = _distance_layout(grid, device)
            self.pairs = self.per_row.sum(0)  # (D,): pairs at each distance
            num = self.pairs.numel()
            w = weights[:, 0]  # (B, N, 2)
            source = w.repeat(1, n, 1)  # (B, N * N, 2): w_j of every pair (i, j), i-major
            if not self.include_self:
                source = source.clone()
                source[:, :: n + 1] = 0  # the pair (i, i): class 0 alone
            # Σ_j w_j over the patches j at each distance from i: (B, N, D, 2)
            self.class_weights = w.new_zeros(batch, n * num, 2).index_add_(1, row_class, source).view(batch, n, num, 2)
        if "uniform" in self.names:
            self.uniform = self._uniform(weights)

    def weights(self, real: torch.Tensor) -> torch.Tensor:
        """The real weights (B, 1, N, 2) with the shuffled draws' beside them (B, 1, N, 2 + 2K)."""
        return torch.cat([real, self.extra], dim=-1)

    def profile(self, attn_patch: torch.Tensor, line: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor | None:
        """The locality profile f (B, h, D) of one map (``line``: its row means), using ``scratch`` (B, h, N, N);
        (B, 1, D), the heads' mean, unless fitted per head."""
        if "locality" not in self.names:
            return None
        n, heads = attn_patch.shape[-1], attn_patch.shape[1]
        torch.div(attn_patch, line, out=scratch)  # α_ij / mean_j α_ij = N x the renormalised row
        rows = scratch if self.per_head else scratch.sum(1, keepdim=True)
        total = rows.new_zeros(*rows.shape[:2], self.pairs.numel())
        total.index_add_(-1, self.flat, rows.view(*rows.shape[:2], n * n))
        return total.double() / (n * self.pairs * (1 if self.per_head else heads))

    def add_layer(self, sums: torch.Tensor, profile: torch.Tensor | None) -> None:
        """Measure one layer (:meth:`layer`) and keep it for :meth:`classes`."""
        self.layers.append(self.layer(sums, profile))

    def classes(self) -> dict[str, torch.Tensor]:
        """{"kk_<control>", "nk_<control>": (B, L, h)} of every layer added, in order."""
        return {
            f"{q}_{name}": torch.stack([layer[name][i] for layer in self.layers], dim=1)
            for name in self.names
            for i, q in enumerate(("kk", "nk"))
        }

    def layer(self, sums: torch.Tensor, profile: torch.Tensor | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{control: (θ_KK, θ_NK)} of one layer, each (B, h); ``sums``: the product with :meth:`weights`."""
        out = {}
        heads = sums.shape[1]
        if "uniform" in self.names:
            kk, nk = self.uniform
            out["uniform"] = (kk.expand(-1, heads), nk.expand(-1, heads))
        if "locality" in self.names:
            line = profile @ self.per_row.T / self.per_row.shape[0]  # (B, h, N): mean_j f(d(i, j))
            attended = profile[:, None, :, :] >= self.gamma * line.transpose(1, 2)[..., None] * (1 - _TIE)
            # (B, N, h', D) @ (B, N, D, 2): Σ_{d∈S_i} of the class weights (sums of counts: exact in float32)
            loc = (attended.to(self.class_weights.dtype) @ self.class_weights).transpose(1, 2)
            kk, nk = self._classes(loc[..., 0] / loc[..., 1], self.counts)  # (B, h', ...)
            out["locality"] = (kk.expand(-1, heads), nk.expand(-1, heads))
        if "shuffled" in self.names:
            drawn = sums[..., 2:].unflatten(-1, (self.draws, 2))  # (B, h, N, K, 2)
            theta = (drawn[..., 0] / drawn[..., 1]).permute(3, 0, 1, 2).flatten(0, 1)  # (K * B, h, N)
            kk, nk = self._classes(theta, self.rolled)
            per_draw = (self.draws, sums.shape[0], heads)
            out["shuffled"] = (kk.view(per_draw).nanmean(0), nk.view(per_draw).nanmean(0))
        return out

    def _uniform(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """θ_KK and θ_NK (B, 1) of α_ij = 1/N: S_i is every patch for γ <= 1 (H_i = γ / N), none above."""
        w = weights[:, 0].double()  # (B, N, 2)
        sums = w.sum(1, keepdim=True).expand_as(w)
        if not self.include_self:
            sums = sums - w
        theta = (sums[..., 0] / sums[..., 1]).unsqueeze(1)  # (B, 1, N)
        if self.gamma > 1:
            theta = torch.full_like(theta, float("nan"))
        return self._classes(theta, self.counts)

    def _classes(self, theta: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes = interrelation(theta.float(), counts, self.min_keypoints)
        return classes.kk, classes.nk


def _ordered_curves(report: Any) -> dict[str, torch.Tensor]:
    curves = report.curves
    if curves is None:
        raise CaptumSiftError("expected a report with per-image curves for the controls' excess, got none")
    if "image" in curves:  # data-set order, whatever the batching and the processes
        order = torch.sort(curves["image"], stable=True).indices
        return {name: value[order] for name, value in curves.items()}
    return curves


def control_excess(report: Any, control: str, quantity: str = "kk", *, resamples: int = 2000) -> Excess:
    """Per layer, how far the real θ_KK (``"kk"``) or gap θ_KK − θ_NK (``"gap"``) exceeds ``control``'s,
    over the report's images (:func:`~captum_sift.theta.controls.excess`, seed 0, images in data-set order)."""
    if control not in CONTROLS:
        raise CaptumSiftError(f"expected a control in {CONTROLS}, got {control!r}")
    if quantity not in ("kk", "gap"):
        raise CaptumSiftError(f"expected quantity 'kk' or 'gap', got {quantity!r}")
    curves = _ordered_curves(report)
    if f"kk_{control}" not in curves:
        raise CaptumSiftError(f"expected a report with the {control} control, got controls {report.controls}")
    real, ctrl = curves["kk"].double(), curves[f"kk_{control}"].double()
    if quantity == "gap":
        real, ctrl = real - curves["nk"].double(), ctrl - curves[f"nk_{control}"].double()
    return excess(real, ctrl, resamples=resamples)


def control_verdicts(report: Any, alpha: float = 0.01, min_excess: float = MIN_EXCESS) -> dict[str, str]:
    """{control: its verdict line on θ_KK} (:func:`~captum_sift.theta.controls.excess_verdict`), every control
    the report holds; a layer counts only where the excess is also at least ``min_excess``. With both the
    locality and the shuffled control, ``"joint"`` holds SPEC §9's verdict: the layers where θ_KK exceeds
    both at once (:func:`~captum_sift.theta.controls.joint_verdict`)."""
    results = {control: control_excess(report, control) for control in report.controls}
    verdicts = {
        control: excess_verdict("θ_KK", control, result, report.layers, alpha, min_excess)
        for control, result in results.items()
    }
    if {"locality", "shuffled"} <= set(results):
        both = {control: results[control] for control in ("locality", "shuffled")}
        verdicts["joint"] = joint_verdict("θ_KK", both, report.layers, alpha, min_excess)
    return verdicts
