"""Where training runs and the per-device speed settings: channels_last everywhere (also
~20 % faster on CPU with oneDNN, measured on 2 cores); on CUDA also bf16 autocast, pinned
memory, DataLoader workers and the training input prepared on a side stream while the
model runs. CPU stays fp32: without AMX, bf16 is ~10x slower there; and the CPU's cores
are the model's, so nothing runs beside it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from bgbias.core.errors import BgbiasError


@dataclass(frozen=True)
class DeviceSetup:
    device: torch.device
    workers: int
    overlap_input: bool = False  # training input one batch ahead, on a thread (engine/train_input.py)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last)

    def loader_options(self) -> dict:
        options = {"num_workers": self.workers, "pin_memory": self.cuda}
        if self.workers:
            options["persistent_workers"] = False
            options["prefetch_factor"] = 4
        return options


def device_setup(requested: str, workers: int | None, local_rank: int = 0) -> DeviceSetup:
    if requested == "cuda" and not torch.cuda.is_available():
        raise BgbiasError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if workers is None:
        # On CPU, loader workers would compete with the model for the same cores.
        workers = min(8, os.cpu_count() or 1) if use_cuda else 0
    return DeviceSetup(device, workers, overlap_input=use_cuda)
