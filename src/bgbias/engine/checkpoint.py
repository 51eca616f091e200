"""Checkpoints: plain dicts of tensors and numbers, written atomically, loadable with
`torch.load(weights_only=True)` (no pickled code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bgbias.errors import BgbiasError
from bgbias.files import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not Path(path).is_file():
        raise BgbiasError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise BgbiasError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
