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


def safe_load(path: Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`: tensors, numbers, strings and containers only. A file
    holding other pickled objects (which could run code) is refused, and a truncated or
    foreign one is reported, in one line naming the file (never torch's advice to load it
    with weights_only=False)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        if "Weights only load failed" in str(exc):
            raise BgbiasError(f"{what} {path} holds pickled objects other than tensors and numbers; refused "
                              "(loading it could run code): use a file written by torch.save of a state dict") from None
        raise BgbiasError(f"{what} {path} cannot be read: truncated or not a PyTorch file "
                          f"({type(exc).__name__})") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not Path(path).is_file():
        raise BgbiasError(f"checkpoint not found: {path}")
    state = safe_load(path, "checkpoint", map_location)
    if not isinstance(state, dict):
        raise BgbiasError(f"checkpoint {path} is not a checkpoint of `bgbias train` (a {type(state).__name__})")
    return state
