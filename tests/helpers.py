"""Small helpers shared by the tests: synthetic images and what a failed subprocess said."""

import torch


def ring_image(size: int = 128, radius: float = 40.0) -> torch.Tensor:
    """A thin bright ring: nothing but curved edges, (1, 1, S, S)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    r = torch.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    return torch.exp(-((r - radius) ** 2) / 2)[None, None]


def blob_image(size: int, centre: tuple[float, float], sigma: float = 2.5) -> torch.Tensor:
    """One bright Gaussian blob at (y, x) on black, (1, 1, S, S)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))[None, None]


def failure_of(result) -> str:
    """What a failed subprocess (torchrun included) said: its first traceback, else its stderr's end."""
    err = result.stderr
    start = err.find("Traceback")
    return err[start : start + 4000] if start >= 0 else err[-2000:]
