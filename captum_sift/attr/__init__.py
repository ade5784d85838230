"""Captum Attribution classes."""

from .sift_interrelation import SIFTInterrelation

__all__ = ["SIFTInterrelation"]
