"""Atomic file writes: a reader (or a killed run) never sees a half-written output."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bgbias.core.errors import BgbiasError

TEMP_SUFFIX = ".partial"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, then rename it onto `path`.

    The temp file lives in the same directory so the rename is atomic (same filesystem).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_image(path: Path, image: Image.Image) -> None:
    """Save with the format taken from `path`'s suffix (the temp name has none)."""
    fmt = Image.registered_extensions()[Path(path).suffix.lower()]
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def refuse_linked(folder: Path, below: Path) -> None:
    """A stage that deletes and replaces files in `folder` refuses it when it, or a folder
    between it and `below`, is a symbolic link: the files there are another folder's.
    (`below` itself may be one, e.g. outputs/ on a scratch disk.)"""
    folder, below = Path(folder), Path(below)
    for path in (folder, *folder.parents):
        if path == below or below not in path.parents:
            return
        if path.is_symlink():
            raise BgbiasError(f"{path} is a symbolic link (to {path.resolve()}); the stage deletes and replaces "
                              f"files under {folder}: make it a plain folder")


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a killed run left behind; returns how many."""
    count = 0
    for tmp in Path(directory).rglob(f"*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count
