"""Mask quality: predicted masks against ground truth, binarised at a threshold.

Per image: IoU = |P & G| / |P | G| (1 when both are empty) and overlap = |P & G| / |G|,
the share of the true object the prediction covers (images with an empty G are left
out of the overlap mean). Masks are paired by relative path.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from bgbias.core.errors import BgbiasError


def iou_and_overlap(pred: np.ndarray, gt: np.ndarray, threshold: int = 128) -> tuple[float, float | None]:
    p, g = pred >= threshold, gt >= threshold
    inter, union = np.logical_and(p, g).sum(), np.logical_or(p, g).sum()
    iou = 1.0 if union == 0 else float(inter / union)
    overlap = None if g.sum() == 0 else float(inter / g.sum())
    return iou, overlap


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except Exception as exc:
        raise BgbiasError(f"cannot read mask {path} ({type(exc).__name__}: {exc})") from None


def _summary(ious: list[float], overlaps: list[float]) -> dict:
    return {
        "n": len(ious),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "mean_overlap": float(np.mean(overlaps)) if overlaps else None,
    }


def evaluate_masks(pred_dir: Path, gt_dir: Path, threshold: int = 128, groups: dict[str, str] | None = None) -> dict:
    """Compare every ground-truth mask under `gt_dir` with the same relative path under `pred_dir`.

    `groups` maps a relative mask path to a group name (e.g. its split) for per-group means.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "predicted masks"), (gt_dir, "ground-truth masks")):
        if not d.is_dir():
            raise BgbiasError(f"{what} folder not found: {d}")
    gt_files = sorted(p for p in gt_dir.rglob("*.png") if p.is_file())
    if not gt_files:
        raise BgbiasError(f"no ground-truth .png masks under {gt_dir}")

    by_group: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    missing = []
    for gt_path in gt_files:
        rel = gt_path.relative_to(gt_dir).as_posix()
        pred_path = pred_dir / rel
        if not pred_path.is_file():
            missing.append(rel)
            continue
        gt, pred = _read_mask(gt_path), _read_mask(pred_path)
        if gt.shape != pred.shape:
            raise BgbiasError(f"{pred_path}: size {pred.shape[::-1]} differs from ground truth {gt.shape[::-1]}")
        iou, overlap = iou_and_overlap(pred, gt, threshold)
        for group in ("all", (groups or {}).get(rel)):
            if group is not None:
                by_group[group][0].append(iou)
                if overlap is not None:
                    by_group[group][1].append(overlap)
    if not by_group:
        raise BgbiasError(f"no predicted mask under {pred_dir} matches a ground-truth mask under {gt_dir}")
    return {
        "threshold": threshold,
        "missing_predictions": len(missing),
        "groups": {name: _summary(*values) for name, values in sorted(by_group.items())},
    }
