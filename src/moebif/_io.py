"""Atomic file output (write to a temporary file in the same folder, then rename) and the
conversion of results to JSON.

A killed process leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "OutputError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable_dir",
    "check_writable_file",
    "default_mode",
    "jsonable",
]


class OutputError(ValueError):
    """An output path cannot be written. ``.option`` names the argument that gave it."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


def default_mode(directory: bool = False) -> int:
    """Permissions an ordinary ``open``/``mkdir`` would give under the current umask (mkstemp
    and mkdtemp create private 0600/0700 entries, which is wrong for results meant to be read)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def check_writable_dir(option: str, path: str | os.PathLike) -> Path:
    """Create ``path`` (with parents) if needed and check that files can be created in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(option, f"cannot create folder {str(path)!r}: {e.strerror}") from None
    if not path.is_dir():
        raise OutputError(option, f"{str(path)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".moebif-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(option, f"folder {str(path)!r} is not writable: {e.strerror}") from None
    return path


def check_writable_file(option: str, path: str | os.PathLike) -> Path:
    """Check that ``path`` can be written (its folder exists and is writable; not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(option, f"{str(path)!r} is a folder, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(option, f"folder {str(parent)!r} does not exist")
    check_writable_dir(option, parent)
    return path


def jsonable(x):
    """Convert numpy scalars/arrays (and nested containers) to JSON-ready Python objects;
    non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    return x
