"""Checkpoints: plain dicts of tensors and numbers, written atomically, loadable with
`torch.load(weights_only=True)` (no pickled code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bgbias.core.errors import BgbiasError
from bgbias.core.files import atomic_write


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


def _pending(best_path: Path) -> Path:
    return best_path.with_name(best_path.name + ".pending")


def save_epoch(last_path: Path, last: dict[str, Any], best_path: Path, best: dict[str, Any] | None) -> None:
    """An epoch's checkpoints, committed by the write of last.pt.

    A new best goes to `best.pt.pending` first and is renamed onto best.pt only after
    last.pt (which names it as the best epoch, and carries the finished flag) is written, so
    a kill at any point leaves best.pt matching last.pt; `recover_best` finishes or drops
    a pending one on resume.
    """
    if best is not None:
        save_checkpoint(_pending(best_path), best)
    save_checkpoint(last_path, last)
    if best is not None:
        os.replace(_pending(best_path), best_path)


def recover_best(best_path: Path, best_epoch: int | None) -> None:
    """Before training on: keep a pending best.pt only if last.pt names its epoch as the
    best (its commit was cut short); with `best_epoch` None (a fresh start) drop best.pt too,
    so that no best.pt of an older run survives this one."""
    pending = _pending(best_path)
    if best_epoch is None:
        pending.unlink(missing_ok=True)
        best_path.unlink(missing_ok=True)
    elif pending.is_file():
        if load_checkpoint(pending).get("epoch") == best_epoch:
            os.replace(pending, best_path)
        else:
            pending.unlink()
