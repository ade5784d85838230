"""Guided curriculum masking and a small MAE for pre-training (SPEC §8)."""

from .masking import KeyShareSchedule, guided_masking, random_masking
from .model import MaskedAutoencoder

__all__ = ["KeyShareSchedule", "MaskedAutoencoder", "guided_masking", "random_masking"]
