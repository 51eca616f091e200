"""The training input on the device: a loader batch -> float images (cropped on the device
for the decode-free store, background replaced for BGAugment) and labels, and, on CUDA,
that work done one batch ahead of the model (also for evaluation's embedding passes).

Why ahead, on a thread: the model step is launch-bound at small batches (its Python and
kernel launches keep the main thread busy), so input work issued from the same thread
adds to every step instead of overlapping it. `device_batches(..., overlap=True)` runs
the loader and the input work on a background thread, on its own CUDA stream, and the
main thread waits only for that batch's event. Same batches in the same order either way:
the input's randomness comes from its explicit generator, used on one thread, in order.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from bgbias.data.bgaugment import BackgroundPool, replace_backgrounds
from bgbias.data.device_crops import random_resized_crops
from bgbias.data.transforms import split_batch
from bgbias.engine.device import DeviceSetup

DEPTH = 2  # batches ready ahead of the model: enough to hide a slow one, little device memory


@dataclass
class TrainInput:
    """Loader batch -> (images float [B, 3, crop, crop], labels) on the device. `prepared`:
    batches come padded from the store ((uint8 [B, 4, H, W], sizes [B, 2])) and get
    RandomResizedCrop + flip here; else they are uint8 [B, 4, crop, crop] cropped by the loader.
    `pool`: BGAugment's backgrounds (None: the base mode), applied with probability `p`."""

    setup: DeviceSetup
    generator: torch.Generator
    pool: BackgroundPool | None = None
    p: float = 1.0
    prepared: bool = False
    crop: int = 0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)

    def __call__(self, batch, labels: torch.Tensor, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prepared:
            padded, sizes = batch
            batch = random_resized_crops(padded.to(self.setup.device, non_blocking=True), sizes, self.crop,
                                         self.crop_scale, self.crop_ratio, self.generator)
        images, masks = split_batch(batch.to(self.setup.device, non_blocking=True))  # [B, 3, H, W], [B, 1, H, W]
        if self.pool is not None:
            draw = self.pool.draw(len(images), self.generator)
            apply = torch.rand(len(images), generator=self.generator) < self.p
            images = replace_backgrounds(images, masks, self.pool, draw, apply)
        return images, labels.to(self.setup.device, non_blocking=True)


Batch = tuple  # what `to_device` makes of a loader item, e.g. (images, labels) on the device


def device_batches(loader: Iterable, to_device: Callable[..., Batch], setup: DeviceSetup,
                   overlap: bool) -> Iterator[Batch]:
    """`to_device(*item)` for each item (batch, labels, indices) of `loader`, in order;
    `overlap`: loading and `to_device` on a background thread (a side stream on CUDA)."""
    if not overlap:
        for item in loader:
            yield to_device(*item)
        return
    yield from _overlapped(loader, to_device, setup)


_END = object()


class _Ahead:
    """The background thread of `device_batches(overlap=True)`: makes the loader's batches
    into a queue of DEPTH, each with the event of its work on the side stream (CUDA)."""

    def __init__(self, loader: Iterable, to_device: Callable[..., Batch], setup: DeviceSetup):
        self.ready: queue.Queue = queue.Queue(maxsize=DEPTH)
        self.stop = threading.Event()
        self.stream = torch.cuda.Stream(setup.device) if setup.cuda else None
        self.thread = threading.Thread(target=self._produce, args=(loader, to_device, setup),
                                       name="bgbias-input-ahead", daemon=True)
        self.thread.start()

    def _offer(self, item) -> bool:
        """Queue `item`; False once the consumer has gone."""
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, loader: Iterable, to_device: Callable[..., Batch], setup: DeviceSetup) -> None:
        try:
            with torch.no_grad(), _on(self.stream, setup):
                for item in loader:
                    out = to_device(*item)
                    event = None
                    if self.stream is not None:
                        event = torch.cuda.Event()
                        event.record(self.stream)
                    if not self._offer((out, event)):
                        return
            self._offer(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._offer(exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def _overlapped(loader: Iterable, to_device: Callable[..., Batch], setup: DeviceSetup) -> Iterator[Batch]:
    ahead = _Ahead(loader, to_device, setup)
    try:
        while (item := ahead.ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            out, event = item
            if event is not None:  # the model's stream waits for this batch, and owns its memory from here
                current = torch.cuda.current_stream(setup.device)
                current.wait_event(event)
                for tensor in out:
                    if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
                        tensor.record_stream(current)
            yield out
    finally:
        ahead.close()


def _on(stream, setup: DeviceSetup) -> contextlib.AbstractContextManager:
    """The side stream, on the training's device (a new thread starts on device 0)."""
    stack = contextlib.ExitStack()
    if stream is not None:
        stack.enter_context(torch.cuda.device(setup.device))
        stack.enter_context(torch.cuda.stream(stream))
    return stack
