"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]

#: Numbers the temporary files of one process, so that two writes of the same path at once never share one.
_WRITES = itertools.count()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block succeeds.

    An interrupted or failed write (a full disk, an exception) never leaves half a file at ``path``,
    and the temporary file is removed either way. Every call writes a temporary file of its own
    (process id and call number), so concurrent writers of one path (torchrun ranks) each rename a whole file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_WRITES)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)
