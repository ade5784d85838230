"""Fixtures of the tests that compare the three model families (tests/family_models.py)."""

from family_models import counts, families, pixels, timm_vit  # noqa: F401 - fixtures for this folder
