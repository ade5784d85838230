"""The `captum-sift` command."""

from .main import main

__all__ = ["main"]
