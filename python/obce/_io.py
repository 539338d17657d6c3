"""Atomic file writes: a temporary file in the destination's folder, then a rename.

A reader never sees a half-written file, and an interrupted write leaves the old one in place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, overwrite: bool = False) -> Iterator:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success.

    Parameters
    ----------
    path : str or path-like
        Destination; its folder is created if missing.
    mode : {"w", "wb"}
        Text (UTF-8, ``\\n`` line ends) or binary.
    overwrite : bool
        Replace an existing file; otherwise an existing file is an error, raised before writing.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write a UTF-8 text file atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, "w", overwrite=overwrite) as f:
        f.write(text)
    return Path(path)
