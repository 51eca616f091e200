"""The pipeline stages DVC runs (through the CLI): one function per stage, params in, files out."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from bgbias.core.assets import asset_path, sha256_of
from bgbias.core.config import Params
from bgbias.data.backgrounds import build_pools
from bgbias.data.datasets import DatasetIndex, build_index
from bgbias.masks.quality import evaluate_masks
from bgbias.masks.compute import EXACT, MODEL_NAME, MaskJob, check_folders, check_jobs, compute_masks, mask_path_for
from bgbias.data.synthetic import generate
from bgbias.core.errors import BgbiasError
from bgbias.core.files import refuse_linked, write_json
from bgbias.data.inputs import write_manifests
from bgbias.core.layout import Layout
from bgbias.core.process_guard import hold_folder

log = logging.getLogger(__name__)


def _fresh_dir(path: Path) -> None:
    """Stages that rebuild everything start from an empty folder (no files of an older run)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def inputs(params: Params, layout: Layout) -> dict:
    manifests = write_manifests(params, layout)
    for name, manifest in manifests.items():
        log.info("input %s: %s%s", name, manifest["path"],
                 f" ({manifest['files']} files)" if "files" in manifest else "")
    return manifests


def synthetic(params: Params, layout: Layout) -> dict:
    _fresh_dir(layout.synthetic)
    summary = generate(params.synthetic, params.data_seed, layout.synthetic)
    log.info("synthetic: %(images)d images of %(classes)d classes, home background share %(home_background_share).3f",
             summary)
    return summary


def backgrounds(params: Params, layout: Layout) -> dict:
    _fresh_dir(layout.backgrounds)
    manifest = build_pools(params.backgrounds, layout.backgrounds, params.data_seed, base=layout.root)
    sizes = {pool: len(entries) for pool, entries in manifest["pools"].items()}
    log.info("backgrounds: %s", ", ".join(f"{pool} pool {n} images" for pool, n in sizes.items()))
    return sizes


def index(params: Params, layout: Layout) -> DatasetIndex:
    dataset_index = build_index(params.selected, params.index, params.dataset)
    dataset_index.write(layout.index_csv(params.dataset))
    for split, counts in dataset_index.summary()["splits"].items():
        log.info("%s: %d images, %d classes", split, counts["images"], counts["classes"])
    return dataset_index


def masks(params: Params, layout: Layout) -> dict:
    with hold_folder(layout.masks(params.dataset)):  # one masks stage per folder at a time
        return _masks(params, layout)


def _masks(params: Params, layout: Layout) -> dict:
    dataset_index = DatasetIndex.read(layout.index_csv(params.dataset), params.selected.root)
    out_dir = layout.masks(params.dataset)
    jobs = [MaskJob(dataset_index.root / s.path, mask_path_for(s.path, out_dir), s.sha1)
            for s in dataset_index.samples]
    refuse_linked(out_dir, out_dir.parent.parent)  # outputs/masks/<dataset>
    check_folders(dataset_index.root, out_dir)
    check_jobs(jobs, out_dir)  # before anything in the folder is touched
    _remove_unlisted(out_dir, {job.mask for job in jobs})
    model = asset_path(MODEL_NAME, params.assets_dir)
    start = time.perf_counter()
    report = compute_masks(jobs, out_dir, model, workers=params.masks.workers, backend=params.masks.backend,
                           batch_size=params.masks.batch_size, precision=params.masks.precision,
                           decoder=params.masks.decoder)
    seconds = time.perf_counter() - start
    if report.written:
        log.info("masks: %d written in %.1f s (%.2f images/s), %d already present",
                 report.written, seconds, report.written / seconds, report.existing)
    # Deterministic content only (no timings), so an unchanged rerun leaves the file as it was.
    summary = {"dataset": params.dataset, "model": MODEL_NAME, "model_sha256": sha256_of(model), "images": len(jobs),
               "failed": report.failed}
    if report.numerics != EXACT:  # masks that differ from onnxruntime's (fp16, nvJPEG...): said so
        summary["numerics"] = report.numerics
    write_json(layout.masks_report, summary)
    if report.failed:
        first = report.failed[0]
        raise BgbiasError(f"{len(report.failed)} image(s) could not be masked, e.g. {first['image']} "
                          f"({first['error']}); see {layout.masks_report}")
    return summary


def prepare(params: Params, layout: Layout) -> dict:
    """Opt-in decode-free training input (data/prepared.py); disabled: a manifest saying so."""
    from bgbias.data.prepared import prepare as store, write_disabled

    refuse_linked(layout.prepared(params.dataset), layout.prepared(params.dataset).parent.parent)
    if not params.prepare.enabled:
        return write_disabled(layout.prepared(params.dataset))
    dataset_index = DatasetIndex.read(layout.index_csv(params.dataset), params.selected.root)
    start = time.perf_counter()
    manifest = store(dataset_index, layout.masks(params.dataset), layout.prepared(params.dataset),
                     params.train.resize)
    for split, info in manifest["splits"].items():
        log.info("prepared %s: %d images, %.1f MB", split, info["images"], info["bytes"] / 1e6)
    log.info("prepare: %.1f s", time.perf_counter() - start)
    return manifest


def _remove_unlisted(out_dir: Path, expected: set[Path]) -> None:
    """Drop masks of images no longer in the index (the folder persists between runs)."""
    if not out_dir.is_dir():
        return
    for path in out_dir.rglob("*.png"):
        if path not in expected:
            path.unlink()


def mask_quality(params: Params, layout: Layout) -> dict:
    gt_dir = params.selected.gt_masks
    report: dict = {"dataset": params.dataset, "model": MODEL_NAME}
    if gt_dir is None:
        report.update(available=False, reason=f"datasets.{params.dataset}.gt_masks is not set")
        log.info("mask quality: %s", report["reason"])
    else:
        dataset_index = DatasetIndex.read(layout.index_csv(params.dataset), params.selected.root)
        groups = {Path(s.path).with_suffix(".png").as_posix(): s.split for s in dataset_index.samples}
        report.update(available=True, **evaluate_masks(layout.masks(params.dataset), gt_dir,
                                                       params.mask_quality.threshold, groups))
        for name, g in report["groups"].items():
            log.info("mask quality %s: IoU %.3f, overlap %.3f (n=%d)", name, g["mean_iou"], g["mean_overlap"], g["n"])
    write_json(layout.mask_quality_report, report)
    return report
