"""Files: atomic writes (a temporary file in the destination's folder, then a rename), digests, and the JSON
form of settings.

A reader never sees a half-written file, and an interrupted write leaves the old one in place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_permissions(path: Path, *, folder: bool) -> None:
    """The mode ``open``/``mkdir`` would have given: tempfile makes its files and folders private to the owner."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        _usual_permissions(Path(tmp), folder=False)
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # A full disk or a read-only folder named by the file the user asked for, not the temporary one.
        ours = isinstance(err, OSError) and (err.filename is None or Path(err.filename).parent == path.parent)
        if ours and err.errno is not None:
            raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write a UTF-8 text file atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, "w", overwrite=overwrite) as f:
        f.write(text)
    return Path(path)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it replaces ``path`` (and whatever was there), so
    the folder appears whole or not at all. On failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    replaced = staging.with_name(f"{staging.name}.replaced")
    try:
        _usual_permissions(staging, folder=True)
        yield staging
        # Two renames, never a removal before the new folder is in place: stopped between them, the old one
        # comes back.
        try:
            if path.exists():
                os.replace(path, replaced)
            os.replace(staging, path)
        except BaseException:
            if replaced.exists() and not path.exists():
                os.replace(replaced, path)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if replaced.is_dir():
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            replaced.unlink(missing_ok=True)  # a file the folder replaced


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files_digest(folder: str | os.PathLike) -> str:
    """A short sha256 of a model folder's config and weights (``config.json``, ``*.safetensors``, ``*.bin``): the
    same folder re-saved with other weights differs. About a second for BERT-base's 440 MB."""
    digest = hashlib.sha256()
    for path in sorted(
        p for p in Path(folder).iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin")
    ):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:16]


def json_value(value):
    """What JSON has no type for: numpy numbers and arrays as Python ones (np.int64(24) is 24, not "24"), anything
    else (a path, a device) as its text. The ``default`` of every ``json.dumps`` of settings."""
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else str(value)
