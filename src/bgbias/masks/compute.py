"""Foreground masks with rembg's u2netp, for every image of a dataset or a folder.

The masks are exactly those of `rembg p -m u2netp -om` (tests compare them with
`rembg.new_session("u2netp").predict`), but made faster: rembg runs decode, resize,
inference, resize back and PNG encode one after another, while here a small thread pool
decodes and writes images while ONNX Runtime (which releases the GIL) runs the model.
Several processes can share the work (`workers`), each with its slice of the CPU threads.

Resumable: each mask is written atomically (temp file + rename) and existing masks are
skipped, so a killed run continues where it stopped and never leaves a half-written mask.
A mask is reused only if it was made from the image file that is there now:
`OUT_DIR/source_hashes.json` records the sha1 of the image each mask was made from, entered
only after the mask is written (a PNG this code did not write has no entry and is
recomputed), and an image replaced under the same name gets a new mask; the record
also names the model's sha256, so another model file redoes every mask. An image that
fails is reported, never written as an empty mask.

Two engines (`backend`): onnxruntime on the CPU, one image at a time (the ONNX file's
input is fixed at batch 1), and the torch port of the same network (data/masks_torch.py),
batched, on CUDA with GPU decoding. `auto` picks torch where CUDA is available. The record
keys masks by model file, not engine: both engines make the same masks (tests), so a
folder made by one is reused by the other.

Masks are written only under OUT_DIR: a job whose mask would land elsewhere (its folder
resolved through symbolic links), or two images sharing a mask name, are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

from bgbias.core.assets import sha256_of
from bgbias.core.images import is_image_file, load_rgb
from bgbias.core.errors import BgbiasError
from bgbias.core.files import remove_stale_temps, save_image, write_json

log = logging.getLogger(__name__)

MODEL_NAME = "u2netp"  # named explicitly: rembg 2.x's default model is a 1 GB one
INPUT_SIZE = (320, 320)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PREFETCH = 8  # images decoded ahead of the model
SOURCE_HASHES = "source_hashes.json"
SOURCE_JOURNAL = "source_hashes.journal"
EXACT = "exact"  # masks equal to onnxruntime's (mask_numerics)
# Records written before the model's hash was recorded are a flat {mask: sha1} map; they
# were made by the only model the checksum check then allowed, this one.
LEGACY_MODEL_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


@dataclass(frozen=True)
class MaskJob:
    image: Path
    mask: Path
    image_sha1: str = ""  # known already (the dataset index has it); else hashed here


@dataclass
class MaskReport:
    written: int = 0
    existing: int = 0
    failed: list[dict] = field(default_factory=list)
    numerics: str = EXACT  # mask_numerics of the engine used

    def as_dict(self) -> dict:
        return {"written": self.written, "existing": self.existing, "failed": self.failed}


def mask_name(relative_image_path: str) -> str:
    """A mask's path relative to its folder: the image's, with the extension .png."""
    return PurePosixPath(relative_image_path).with_suffix(".png").as_posix()


def mask_path_for(relative_image_path: str | Path, out_dir: Path) -> Path:
    """`OUT_DIR/<relative path without extension>.png`."""
    return Path(out_dir) / Path(relative_image_path).with_suffix(".png")


def check_folders(images_dir: Path, out_dir: Path) -> None:
    """OUT_DIR must not hold the images: masks would overwrite them, stale ones be deleted."""
    images, out = Path(images_dir).resolve(), Path(out_dir).resolve()
    if images.is_relative_to(out):
        raise BgbiasError(f"OUT_DIR {out_dir} must not contain IMAGES_DIR {images_dir} "
                          "(masks would be written among the images)")


def folder_jobs(images_dir: Path, out_dir: Path) -> list[MaskJob]:
    """A job per image under `images_dir`, skipping `out_dir` when it lies inside (its masks
    are PNG images too)."""
    check_folders(images_dir, out_dir)
    out = Path(out_dir).resolve()
    images = sorted(p for p in Path(images_dir).rglob("*")
                    if p.is_file() and is_image_file(p) and not p.parent.resolve().is_relative_to(out))
    return [MaskJob(p, mask_path_for(p.relative_to(images_dir), out_dir)) for p in images]


def check_jobs(jobs: list[MaskJob], out_dir: Path) -> None:
    """Every mask lies under `out_dir` once symbolic links in its folders are resolved (a
    link at the mask path itself is replaced, never written through), one image per mask."""
    out = Path(out_dir).resolve()
    owner: dict[Path, MaskJob] = {}
    for job in jobs:
        if not job.mask.parent.resolve().is_relative_to(out):
            raise BgbiasError(f"the mask of {job.image} would be written at {job.mask}, outside the masks folder "
                              f"{out_dir} (a symbolic link or a crafted path?)")
        other = owner.setdefault(job.mask, job)
        if other is not job:
            raise BgbiasError(f"{other.image} and {job.image} would share the mask "
                              f"'{job.mask.relative_to(out_dir).as_posix()}'; rename one of them")


# ---- rembg's u2netp pre/post-processing, split so the stages can overlap --------------------


def preprocess(image: Image.Image) -> np.ndarray:
    """(1, 3, 320, 320) float32, as rembg's BaseSession.normalize computes it."""
    small = np.array(image.convert("RGB").resize(INPUT_SIZE, Image.Resampling.LANCZOS))
    scaled = small / max(np.max(small), 1e-6)
    chw = np.stack([(scaled[:, :, c] - MEAN[c]) / STD[c] for c in range(3)])
    return chw[None].astype(np.float32)


def postprocess(prediction: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Min-max normalised saliency map resized to the image size, as rembg's U2netpSession."""
    pred = prediction[:, 0, :, :]
    lo, hi = np.min(pred), np.max(pred)
    pred = np.squeeze((pred - lo) / (hi - lo))
    return Image.fromarray((pred * 255).astype("uint8"), mode="L").resize(size, Image.Resampling.LANCZOS)


class U2netpMasker:
    """One ONNX Runtime session of the verified local u2netp model (nothing is downloaded)."""

    def __init__(self, model_path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, image: Image.Image) -> Image.Image:
        return postprocess(self.infer(preprocess(image)), image.size)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def _load(job: MaskJob) -> tuple[np.ndarray, tuple[int, int]]:
    image = load_rgb(job.image)
    return preprocess(image), image.size


def _save(job: MaskJob, prediction: np.ndarray, size: tuple[int, int]) -> None:
    save_image(job.mask, postprocess(prediction, size))


def _result(job: MaskJob, future: Future) -> tuple[MaskJob, str | None]:
    exc = future.exception()
    return job, None if exc is None else f"{type(exc).__name__}: {exc}"


def run_pipelined(jobs: list[MaskJob], masker: U2netpMasker) -> Iterator[tuple[MaskJob, str | None]]:
    """Yield (job, error or None) per job; decode/encode threads overlap the model."""
    with ThreadPoolExecutor(2) as io:
        saves: deque[tuple[MaskJob, Future]] = deque()
        for job, loaded in prefetched(jobs, lambda j: io.submit(_load, j), ahead=PREFETCH):
            if loaded.exception() is not None:
                yield _result(job, loaded)
                continue
            batch, size = loaded.result()
            try:
                prediction = masker.infer(batch)
            except Exception as exc:  # reported per image; the run goes on
                yield job, f"{type(exc).__name__}: {exc}"
                continue
            saves.append((job, io.submit(_save, job, prediction, size)))
            while saves and saves[0][1].done():
                yield _result(*saves.popleft())
        while saves:
            yield _result(*saves.popleft())


def prefetched(jobs: list[MaskJob], submit, ahead: int) -> Iterator[tuple[MaskJob, Future]]:
    """(job, future of its load) in order, keeping `ahead` loads in flight."""
    pending: deque[tuple[MaskJob, Future]] = deque()
    remaining = iter(jobs)
    for job in remaining:
        pending.append((job, submit(job)))
        if len(pending) >= ahead:
            break
    while pending:
        job, future = pending.popleft()
        nxt = next(remaining, None)
        if nxt is not None:
            pending.append((nxt, submit(nxt)))
        yield job, future


def _worker(args: tuple[list[MaskJob], Path, int]) -> list[tuple[MaskJob, str | None]]:
    jobs, model_path, threads = args
    return list(run_pipelined(jobs, U2netpMasker(model_path, threads)))


def _cuda_available() -> bool:
    # No NVIDIA driver loaded: no CUDA, known without importing torch (seconds per process).
    if not Path("/proc/driver/nvidia").exists() and not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_engine(backend: str, device: str | None) -> tuple[str, str]:
    """(backend, device) to use for `backend` auto | onnxruntime | torch and `device` None
    (CUDA where available) | cpu | cuda."""
    if backend == "onnxruntime" and device in (None, "cpu"):
        return backend, "cpu"
    cuda = _cuda_available()
    if device == "cuda" and not cuda:
        raise BgbiasError("masks: device cuda was asked for, but torch sees no CUDA device")
    device = device or ("cuda" if cuda else "cpu")
    if backend == "auto":
        backend = "torch" if device == "cuda" else "onnxruntime"
    if backend == "onnxruntime" and device != "cpu":
        raise BgbiasError("masks: the onnxruntime backend runs on the CPU; use --backend torch for cuda")
    return backend, device


def _run(jobs: list[MaskJob], model_path: Path, workers: int, engine: tuple[str, str] = ("onnxruntime", "cpu"),
         batch_size: int = 1, precision: str = "fp32", decoder: str = "pillow") -> Iterator[tuple[MaskJob, str | None]]:
    cores = os.cpu_count() or 1
    if engine[0] == "torch":  # one process: batches keep the device busy
        from bgbias.masks.torch_engine import TorchMasker, run_batched

        yield from run_batched(jobs, TorchMasker(model_path, engine[1], precision=precision, decoder=decoder),
                               batch_size)
        return
    if workers == 1:
        yield from run_pipelined(jobs, U2netpMasker(model_path, cores))
        return
    # Small shards, handed out in order, keep progress smooth and a kill loses little work.
    shards = [jobs[i : i + 16] for i in range(0, len(jobs), 16)]
    threads = max(1, cores // workers)
    with ProcessPoolExecutor(workers) as pool:
        for results in pool.map(_worker, [(shard, model_path, threads) for shard in shards]):
            yield from results


def _sha1(job: MaskJob) -> str:
    if job.image_sha1:
        return job.image_sha1
    try:
        return hashlib.sha1(job.image.read_bytes()).hexdigest()
    except OSError:
        return ""  # unreadable: no mask is kept, and computing it reports the error


class SourceRecord:
    """Which image file (sha1) each mask was made from, by mask path: `source_hashes.json`,
    plus a journal that a run appends a line to after each mask it writes (so no entry
    precedes its mask and a kill loses none); merged into the JSON at the start and end of a run."""

    def __init__(self, out_dir: Path):
        self.path, self.journal = Path(out_dir) / SOURCE_HASHES, Path(out_dir) / SOURCE_JOURNAL
        self.made_from: dict[str, str] = {}
        self.model_sha256: str | None = None  # the model the recorded masks were made with
        self.numerics = EXACT  # and how (mask_numerics)
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and "sources" in loaded:
                self.model_sha256, self.made_from = loaded.get("model_sha256"), dict(loaded["sources"])
                self.numerics = str(loaded.get("numerics", EXACT))
            elif isinstance(loaded, dict):  # legacy flat record
                self.model_sha256, self.made_from = LEGACY_MODEL_SHA256, loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            log.warning("%s cannot be read: its masks are recomputed", self.path)
        if self.journal.is_file():  # left by a killed run; a torn last line is ignored
            for line in self.journal.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:
                try:
                    key, sha1 = json.loads(line)
                    self.made_from[str(key)] = str(sha1)
                except (ValueError, TypeError):
                    continue

    def save(self) -> None:
        numerics = {} if self.numerics == EXACT else {"numerics": self.numerics}  # exact: the record as before
        write_json(self.path, {"model_sha256": self.model_sha256, **numerics, "sources": self.made_from})
        self.journal.unlink(missing_ok=True)

    @contextmanager
    def appending(self) -> Iterator[Callable[[str, str], None]]:
        """`add(key, sha1)` after each mask written; saved (journal merged) on the way out."""
        try:
            with open(self.journal, "a", encoding="utf-8") as journal:
                def add(key: str, sha1: str) -> None:
                    self.made_from[key] = sha1
                    journal.write(json.dumps([key, sha1]) + "\n")
                    journal.flush()  # in the OS's hands: survives a kill of this process

                yield add
        finally:
            self.save()


def mask_numerics(engine: tuple[str, str], precision: str, decoder: str) -> str:
    """"exact" where the masks are onnxruntime's up to float summation order (onnxruntime;
    torch on the CPU; torch on CUDA in fp32 on Pillow's pixels), else e.g. "cuda-fp16-nvjpeg"."""
    if engine[0] == "onnxruntime" or engine[1] == "cpu" or (precision, decoder) == ("fp32", "pillow"):
        return EXACT
    return f"{engine[1]}-{precision}-{decoder}"


def drop_stale_masks(jobs: list[MaskJob], out_dir: Path, sha1s: dict[str, str], model_sha256: str,
                     numerics: str = EXACT) -> SourceRecord:
    """Delete the masks not recorded as made from the current image file (`sha1s` by mask
    key) by the current model with the current numerics, and save the record of those kept."""
    record = SourceRecord(out_dir)
    current = record.model_sha256 == model_sha256 and record.numerics == numerics
    if not current:  # a kill before save() ends must not leave the old run's journal to be merged later
        record.journal.unlink(missing_ok=True)
    made_from = record.made_from if current else {}  # another model or numerics: none is current
    record.model_sha256, record.numerics = model_sha256, numerics
    record.made_from = {key: sha1 for key, sha1 in made_from.items() if key not in sha1s}  # images not in this run
    for job in jobs:
        key = job.mask.relative_to(out_dir).as_posix()
        if not (job.mask.is_file() or job.mask.is_symlink()):
            continue
        if sha1s[key] and made_from.get(key) == sha1s[key]:
            record.made_from[key] = sha1s[key]
        else:
            job.mask.unlink()
    record.save()
    return record


def compute_masks(jobs: Iterable[MaskJob], out_dir: Path, model_path: Path, workers: int = 1,
                  progress: bool = True, backend: str = "onnxruntime", device: str | None = None,
                  batch_size: int = 16, precision: str = "fp32", decoder: str = "pillow") -> MaskReport:
    """Masks for `jobs`, whose mask paths lie under `out_dir`; existing up-to-date masks are kept.
    `backend`/`device`: see `resolve_engine`; `batch_size`, `precision`, `decoder`: the torch
    engine's images per batch, numerics and JPEG decoder on CUDA (`masks_torch.TorchMasker`)."""
    jobs = list(jobs)
    engine = resolve_engine(backend, device)
    check_jobs(jobs, out_dir)
    for directory in {job.mask.parent for job in jobs}:
        if directory.is_dir():
            remove_stale_temps(directory)
    sha1s = {job.mask.relative_to(out_dir).as_posix(): _sha1(job) for job in jobs}
    numerics = mask_numerics(engine, precision, decoder)
    record = drop_stale_masks(jobs, Path(out_dir), sha1s, sha256_of(Path(model_path)), numerics)
    todo = [job for job in jobs if not job.mask.is_file()]
    report = MaskReport(existing=len(jobs) - len(todo), numerics=numerics)
    if report.existing:
        log.info("%d masks already present, %d to compute", report.existing, len(todo))
    if not todo:
        return report
    with record.appending() as add, tqdm(total=len(todo), desc=f"{MODEL_NAME} masks", disable=not progress) as bar:
        for job, error in _run(todo, Path(model_path), workers, engine, batch_size, precision, decoder):
            bar.update()
            if error is None:
                report.written += 1
                key = job.mask.relative_to(out_dir).as_posix()
                add(key, sha1s[key])
            else:
                log.warning("mask failed for %s (%s)", job.image, error)
                report.failed.append({"image": str(job.image), "error": error})
    return report
