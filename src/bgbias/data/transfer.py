"""Host-to-device copies that do not wait for the GPU.

A copy from pageable CPU memory makes the host wait until everything queued on the stream
has run (the previous training step included), which serialises the input work with the
model. Small tensors made on the CPU each step (crop boxes, background draws, index lists)
go through pinned memory and are copied asynchronously instead."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor.to(device)`, asynchronous for a CPU tensor bound for CUDA (pinned first)."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
