"""The one public exception type of captum_sift."""

from __future__ import annotations

__all__ = ["CaptumSiftError"]


class CaptumSiftError(ValueError):
    """Raised for every bad input captum_sift detects.

    The message names what was expected and what was given, e.g.
    ``expected images of shape (B, C, H, W), got (3, 224)``. It subclasses
    :class:`ValueError`, so ``except ValueError`` also catches it.
    """
