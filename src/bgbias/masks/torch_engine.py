"""The u2netp masks of data/masks.py, computed in batches by the torch port of the model.

Same masks, another engine: the network is `models/u2netp.py` with the weights of the same
pinned ONNX file, and the pre/post-processing is rembg's (LANCZOS to 320x320, scale by the
maximum, ImageNet normalisation; min-max, uint8, LANCZOS back to the image size).

- On the CPU images are decoded and resized with Pillow (as rembg) on threads, and the
  network runs in fp32: masks equal onnxruntime's up to float summation order (tests).
- On CUDA, images are decoded on CPU threads by Pillow (`masks.decoder: nvjpeg`: JPEGs on
  the GPU by `torchvision.io.decode_jpeg`), resized on the GPU with the Pillow-exact LANCZOS
  of `data/resample.py`, and the network runs channels_last in `masks.precision`; only the
  finished uint8 masks come back, and PNG encoding and writing overlap the GPU on CPU
  threads. The defaults (pillow, fp32 with TF32 off) give onnxruntime's masks; nvjpeg and
  fp16 are ~3x faster and move some masks (benchmarks/masks_precision.py, README).

`run_batched` yields (job, error or None) per job, like `masks.run_pipelined`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bgbias.core.images import load_rgb
from bgbias.masks.compute import INPUT_SIZE, MEAN, STD, MaskJob, postprocess, prefetched, preprocess
from bgbias.masks.resample import resize_lanczos
from bgbias.core.files import save_image
from bgbias.masks.u2netp import u2netp_from_onnx

IO_THREADS = min(16, max(4, os.cpu_count() or 1))  # file reads, Pillow decoding, PNG writes
JPEG_EXTENSIONS = (".jpg", ".jpeg")


PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DECODERS = ("pillow", "nvjpeg")
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchMasker:
    """u2netp on `device`; `device_ops`: pre/post-processing as tensors on the device
    (always on CUDA; on the CPU only to test that path against Pillow's). `precision` of the
    network on CUDA: fp32 (TF32 off: onnxruntime's masks), tf32 (TF32 convolutions), fp16 or
    bf16 autocast; the CPU always runs fp32. `decoder` of JPEG files for the device path:
    pillow (on CPU threads, as rembg) or nvjpeg (on the GPU; its pixels differ from Pillow's
    by a level here and there, which moves some masks a lot: benchmarks/masks_precision.py)."""

    def __init__(self, model_path: Path, device: str | torch.device = "cpu", device_ops: bool | None = None,
                 precision: str = "fp32", decoder: str = "pillow"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} (got {precision!r})")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS} (got {decoder!r})")
        self.decoder = decoder
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.device_ops = self.cuda if device_ops is None else device_ops
        self.model = u2netp_from_onnx(model_path).to(self.device)
        self.precision = precision if self.cuda else "fp32"
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _numerics(self):
        if not self.cuda:
            return contextlib.nullcontext()
        if self.precision in AUTOCAST:
            return torch.autocast("cuda", AUTOCAST[self.precision])
        # A context (cudnn's flags restored on exit), so training's own TF32 choice stays as
        # it was; masks run on one thread.
        return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                          allow_tf32=self.precision == "tf32")

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, 320, 320) float32 -> (N, 1, 320, 320) float32 saliency, on the device."""
        x = batch.to(self.device, non_blocking=True)
        with self._numerics():
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float()


def preprocess_tensor(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> (N, 3, 320, 320) float32: `masks.preprocess`, bit
    for bit, per image (each scaled by its own maximum; no host sync)."""
    small = resize_lanczos(images, INPUT_SIZE).to(torch.float64)
    scaled = small / small.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    mean = torch.tensor(MEAN, dtype=torch.float64, device=images.device)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float64, device=images.device)[:, None, None]
    return ((scaled - mean) / std).to(torch.float32)


def postprocess_tensor(predictions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, 320, 320) float32 -> uint8 (N, H, W) masks of one size: `masks.postprocess`, bit for bit."""
    lo = predictions.amin(dim=(1, 2, 3))[:, None, None]
    hi = predictions.amax(dim=(1, 2, 3))[:, None, None]
    scaled = ((predictions[:, 0] - lo) / (hi - lo)) * 255
    return resize_lanczos(scaled.to(torch.uint8), size)


GROUP_PIXELS = 1 << 26  # per batched resize: float64 RGB of 67 M pixels is 1.6 GB on the device


def _by_size(images: list[torch.Tensor]) -> list[list[int]]:
    """Positions of the (3, H, W) images grouped by (H, W), each group one batched resize of
    at most GROUP_PIXELS pixels (64 photos of 12 MP would need 18 GB at once)."""
    groups: dict[tuple[int, int], list[list[int]]] = {}
    for i, image in enumerate(images):
        chunks = groups.setdefault((image.shape[1], image.shape[2]), [[]])
        if chunks[-1] and (len(chunks[-1]) + 1) * image.shape[1] * image.shape[2] > GROUP_PIXELS:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


class PendingMasks:
    """A batch's masks while the device computes them: copies to (pinned) host memory are
    queued behind the network, so the host can queue the next batch before waiting here."""

    def __init__(self, groups: list[list[int]], host: list[torch.Tensor], done: torch.cuda.Event | None):
        self.groups, self.host, self.done = groups, host, done

    def result(self) -> list[np.ndarray]:
        """uint8 (H, W) masks in the images' order (waits for the device)."""
        if self.done is not None:
            self.done.synchronize()
        masks: list = [None] * sum(len(positions) for positions in self.groups)
        for positions, values in zip(self.groups, self.host):
            for i, mask in zip(positions, values.numpy()):
                masks[i] = mask
        return masks


def launch_masks(masker: TorchMasker, images: list[torch.Tensor]) -> PendingMasks:
    """uint8 (3, H, W) images on the device -> their masks, queued (no host sync on CUDA).
    Images of one size are resized together, and each size's masks come back in one copy."""
    groups = _by_size(images)
    rows = [torch.tensor(positions, device=masker.device) for positions in groups]
    inputs = torch.empty((len(images), 3, *INPUT_SIZE[::-1]), dtype=torch.float32, device=masker.device)
    for positions, row in zip(groups, rows):
        inputs[row] = preprocess_tensor(torch.stack([images[i] for i in positions]))
    predictions = masker.infer(inputs)
    host = []
    for positions, row in zip(groups, rows):
        height, width = images[positions[0]].shape[1:]
        masks = postprocess_tensor(predictions[row], (width, height))
        # Non-blocking to the CPU lands in pinned memory (torch's caching host allocator).
        host.append(masks.to("cpu", non_blocking=True) if masks.is_cuda else masks)
    done = None
    if masker.device.type == "cuda":
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(masker.device))
    return PendingMasks(groups, host, done)


def masks_on_device(masker: TorchMasker, images: list[torch.Tensor]) -> list[np.ndarray]:
    """uint8 (3, H, W) images on the device -> uint8 (H, W) masks on the host."""
    return launch_masks(masker, images).result()


def _decode_on_device(jobs: list[MaskJob], data: list[bytes | np.ndarray], device: torch.device) -> list:
    """uint8 (3, H, W) tensors on `device`, or the exception of each image that failed.
    `data`: a JPEG file's bytes (decoded here, on the device) or an image Pillow decoded."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list = [torch.from_numpy(d).permute(2, 0, 1).to(device) if isinstance(d, np.ndarray) else None
                 for d in data]
    jpegs = [i for i, d in enumerate(data) if isinstance(d, bytes)]
    if jpegs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice, once per batch
            try:
                decoded = decode_jpeg([torch.frombuffer(data[i], dtype=torch.uint8) for i in jpegs],
                                      mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
            except (RuntimeError, ValueError):  # a file in the batch it cannot decode (CMYK, corrupt...): Pillow for these
                decoded = [None] * len(jpegs)
        for i, image in zip(jpegs, decoded):
            out[i] = image
    for i, job in enumerate(jobs):
        if out[i] is None:
            try:
                out[i] = torch.from_numpy(np.array(load_rgb(job.image))).permute(2, 0, 1).to(device)
            except Exception as exc:  # reported per image
                out[i] = exc
    return out


def _read(job: MaskJob, nvjpeg: bool) -> bytes | np.ndarray:
    """On a loader thread: a JPEG file's bytes (nvjpeg: the GPU decodes them), else the image decoded by Pillow."""
    if nvjpeg and job.image.suffix.lower() in JPEG_EXTENSIONS:
        return job.image.read_bytes()
    return np.array(load_rgb(job.image))


def _load_host(job: MaskJob) -> tuple[np.ndarray, tuple[int, int]]:
    image = load_rgb(job.image)
    return preprocess(image)[0], image.size


def _save_host(job: MaskJob, prediction: np.ndarray, size: tuple[int, int]) -> None:
    save_image(job.mask, postprocess(prediction[None], size))


def _save_mask(job: MaskJob, mask: np.ndarray) -> None:
    from PIL import Image

    save_image(job.mask, Image.fromarray(mask, mode="L"))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


Saves = list[tuple[MaskJob, Future]]
Failures = list[tuple[MaskJob, str]]


class Launched:
    """A batch handed to the model: `finish` waits for its masks and queues their saves."""

    def __init__(self, jobs: list[MaskJob], collect: Callable[[], list], save: Callable[..., None]):
        self.jobs, self.collect, self.save = jobs, collect, save

    def finish(self, io: ThreadPoolExecutor) -> Saves:
        return [(job, io.submit(self.save, job, *result)) for job, result in zip(self.jobs, self.collect())]


def _launch_host(masker: TorchMasker, loaded: list) -> tuple[Launched | None, Failures]:
    """Pillow-preprocessed arrays in; post-processing (Pillow's) on the save threads."""
    batch = torch.from_numpy(np.stack([array for _, (array, _) in loaded]))
    predictions = masker.infer(batch).cpu().numpy()
    results = [(pred, size) for (_, (_, size)), pred in zip(loaded, predictions)]
    return Launched([job for job, _ in loaded], lambda: results, _save_host), []


def _launch_device(masker: TorchMasker, loaded: list) -> tuple[Launched | None, Failures]:
    """File bytes in: decode, resize, infer and post-process queued on the device."""
    jobs = [job for job, _ in loaded]
    images = _decode_on_device(jobs, [data for _, data in loaded], masker.device)
    failed = [(job, _error(image)) for job, image in zip(jobs, images) if isinstance(image, BaseException)]
    good = [(job, image) for job, image in zip(jobs, images) if not isinstance(image, BaseException)]
    if not good:
        return None, failed
    pending = launch_masks(masker, [image for _, image in good])
    return Launched([job for job, _ in good], lambda: [(mask,) for mask in pending.result()], _save_mask), failed


def _batches(jobs: list[MaskJob], masker: TorchMasker, io: ThreadPoolExecutor, batch_size: int):
    """Per batch: (jobs whose load failed with their error, jobs loaded with what was loaded)."""
    load = functools.partial(_read, nvjpeg=masker.decoder == "nvjpeg") if masker.device_ops else _load_host
    stream = prefetched(jobs, lambda job: io.submit(load, job), ahead=2 * batch_size)
    while chunk := [item for _, item in zip(range(batch_size), stream)]:
        failed = [(job, _error(f.exception())) for job, f in chunk if f.exception() is not None]
        yield failed, [(job, f.result()) for job, f in chunk if f.exception() is None]


def run_batched(jobs: list[MaskJob], masker: TorchMasker, batch_size: int) -> Iterator[tuple[MaskJob, str | None]]:
    """Yield (job, error or None) per job. Loads and PNG writes overlap the model on threads,
    and on the device one batch is queued while the one before it finishes."""
    launch = _launch_device if masker.device_ops else _launch_host
    with ThreadPoolExecutor(IO_THREADS) as io:
        saves: deque[tuple[MaskJob, Future]] = deque()
        in_flight: Launched | None = None
        for failed, loaded in _batches(jobs, masker, io, batch_size):
            yield from failed
            if not loaded:
                continue
            try:
                launched, failed = launch(masker, loaded)
            except Exception as exc:  # reported for every image of the batch; the run goes on
                yield from ((job, _error(exc)) for job, _ in loaded)
                continue
            yield from failed
            yield from _finish(in_flight, io, saves)
            in_flight = launched
            while saves and saves[0][1].done():
                job, future = saves.popleft()
                yield job, None if future.exception() is None else _error(future.exception())
        yield from _finish(in_flight, io, saves)
        for job, future in saves:
            yield job, None if future.exception() is None else _error(future.exception())


def _finish(launched: Launched | None, io: ThreadPoolExecutor, saves: deque) -> Iterator[tuple[MaskJob, str]]:
    """Queue a launched batch's saves; its failure (at the device's sync) is every image's."""
    if launched is None:
        return
    try:
        saves.extend(launched.finish(io))
    except Exception as exc:
        yield from ((job, _error(exc)) for job in launched.jobs)
