"""The `captum-sift` command.

main.py parses the command line and runs the command's module (analyze, mask_eval, compare,
pretrain, keypoints) with its typed options (options.py); analyze, mask-eval and compare share
one loop (runner.py) over the model and data of loading.py and sources.py, and write through folder.py.
"""

from .main import main

__all__ = ["main"]
