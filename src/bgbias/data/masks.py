"""Foreground masks with rembg's u2netp, for every image of a dataset or a folder.

The masks are exactly those of `rembg p -m u2netp -om` (tests compare them with
`rembg.new_session("u2netp").predict`), but made faster: rembg runs decode, resize,
inference, resize back and PNG encode one after another, while here a small thread pool
decodes and writes images while ONNX Runtime (which releases the GIL) runs the model.
Several processes can share the work (`workers`), each with its slice of the CPU threads.

Resumable: each mask is written atomically (temp file + rename) and existing masks are
skipped, so a killed run continues where it stopped and never leaves a half-written mask.
A mask is reused only if it was made from the image file that is there now and by the
model file that is there now: `OUT_DIR/source_hashes.json` records the model's sha256 and
each source's sha1, so an image replaced under the same name gets a new mask, and another
model file redoes every mask. An image that fails is reported, never written as an empty mask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bgbias.assets import sha256_of
from bgbias.data.images import is_image_file, load_rgb
from bgbias.files import remove_stale_temps, save_image, write_json

log = logging.getLogger(__name__)

MODEL_NAME = "u2netp"  # named explicitly: rembg 2.x's default model is a 1 GB one
INPUT_SIZE = (320, 320)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PREFETCH = 8  # images decoded ahead of the model
SOURCE_HASHES = "source_hashes.json"
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

    def as_dict(self) -> dict:
        return {"written": self.written, "existing": self.existing, "failed": self.failed}


def mask_path_for(relative_image_path: str | Path, out_dir: Path) -> Path:
    """`OUT_DIR/<relative path without extension>.png`."""
    return Path(out_dir) / Path(relative_image_path).with_suffix(".png")


def folder_jobs(images_dir: Path, out_dir: Path) -> list[MaskJob]:
    images = sorted(p for p in Path(images_dir).rglob("*") if p.is_file() and is_image_file(p))
    return [MaskJob(p, mask_path_for(p.relative_to(images_dir), out_dir)) for p in images]


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
        loads: deque[tuple[MaskJob, Future]] = deque()
        saves: deque[tuple[MaskJob, Future]] = deque()
        pending = iter(jobs)
        for job in pending:
            loads.append((job, io.submit(_load, job)))
            if len(loads) >= PREFETCH:
                break
        while loads:
            job, loaded = loads.popleft()
            nxt = next(pending, None)
            if nxt is not None:
                loads.append((nxt, io.submit(_load, nxt)))
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


def _worker(args: tuple[list[MaskJob], Path, int]) -> list[tuple[MaskJob, str | None]]:
    jobs, model_path, threads = args
    return list(run_pipelined(jobs, U2netpMasker(model_path, threads)))


def _run(jobs: list[MaskJob], model_path: Path, workers: int) -> Iterator[tuple[MaskJob, str | None]]:
    cores = os.cpu_count() or 1
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


def read_source_hashes(out_dir: Path) -> tuple[str | None, dict[str, str]]:
    """(sha256 of the model the masks were made with, {mask path: image sha1})."""
    record = Path(out_dir) / SOURCE_HASHES
    if not record.is_file():
        return None, {}
    data = json.loads(record.read_text())
    if "sources" not in data:  # legacy flat record
        return LEGACY_MODEL_SHA256, data
    return data["model_sha256"], data["sources"]


def drop_stale_masks(jobs: list[MaskJob], out_dir: Path, model_sha256: str) -> None:
    """Delete masks not made from the current image file by the current model, then record
    the current hashes (before any mask is computed, so a killed run resumes correctly)."""
    made_by, made_from = read_source_hashes(out_dir)
    if made_by != model_sha256:
        made_from = {}  # another model: no existing mask is up to date
    current = {}
    for job in jobs:
        key, sha1 = job.mask.relative_to(out_dir).as_posix(), _sha1(job)
        current[key] = sha1
        if job.mask.exists() and (not sha1 or made_from.get(key) != sha1):
            job.mask.unlink()
    write_json(Path(out_dir) / SOURCE_HASHES, {"model_sha256": model_sha256, "sources": {**made_from, **current}})


def compute_masks(jobs: Iterable[MaskJob], out_dir: Path, model_path: Path, workers: int = 1,
                  progress: bool = True) -> MaskReport:
    """Masks for `jobs`, whose mask paths lie under `out_dir`; existing up-to-date masks are kept."""
    jobs = list(jobs)
    for directory in {job.mask.parent for job in jobs}:
        if directory.is_dir():
            remove_stale_temps(directory)
    drop_stale_masks(jobs, Path(out_dir), sha256_of(Path(model_path)))
    todo = [job for job in jobs if not job.mask.is_file()]
    report = MaskReport(existing=len(jobs) - len(todo))
    if report.existing:
        log.info("%d masks already present, %d to compute", report.existing, len(todo))
    if not todo:
        return report
    with tqdm(total=len(todo), desc=f"{MODEL_NAME} masks", disable=not progress) as bar:
        for job, error in _run(todo, Path(model_path), workers):
            bar.update()
            if error is None:
                report.written += 1
            else:
                log.warning("mask failed for %s (%s)", job.image, error)
                report.failed.append({"image": str(job.image), "error": error})
    return report
