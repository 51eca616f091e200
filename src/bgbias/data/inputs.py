"""Manifests of the files outside the pipeline that stages read, so that DVC reruns a stage
when one of them changes.

DVC 3.67 cannot name them as deps: `datasets.${dataset}.root` is a nested interpolation
(`Could not find 'datasets.${dataset'`), and a dep that does not exist fails the stage
(`backgrounds.source: bundled`, `model.weights: null`, a tuned file not made yet). So the
`inputs` stage (`always_changed`, cheap) writes one small JSON per input with a content
digest of what the params point at now, and each stage that reads an input depends on its
manifest. An unchanged input leaves its manifest byte-identical, so nothing after it reruns.

A manifest names its input relative to the project (identical in every clone) and lists
what it stands for under `covers`. Inputs under `outputs/` are stage outputs, which the
DAG tracks already (dvc.yaml names them as deps); they are recorded, not hashed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bgbias.core.config import ModelConfig, Params
from bgbias.core.errors import BgbiasError
from bgbias.core.files import write_json
from bgbias.core.layout import Layout


def _sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def content_digest(path: Path) -> tuple[int, str]:
    """(number of files, sha1 over each file's relative path and content hash) of a file or folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\t{_sha1(file)}\n".encode())
    return len(files), digest.hexdigest()


def describe_path(path: Path | None, layout: Layout) -> dict:
    """{path, covers, files, sha1} of a file or folder; stage outputs and absent paths are
    recorded without a digest (the stage that reads them reports a missing one)."""
    if path is None:
        return {"path": None, "covers": []}
    path = Path(path)
    entry: dict = {"path": _relative(path, layout.root)}
    if path.resolve().is_relative_to(layout.outputs.resolve()):
        return {**entry, "covers": [], "stage_output": True}
    if not path.exists():
        return {**entry, "covers": [entry["path"]], "missing": True}
    files, digest = content_digest(path)
    return {**entry, "covers": [entry["path"]], "files": files, "sha1": digest}


def _backgrounds(params: Params, layout: Layout) -> dict:
    from bgbias.data.backgrounds import BUNDLED_PHOTOS, bundled_dir

    cfg = params.backgrounds
    if cfg.source != "bundled":
        source = Path(cfg.source)
        return describe_path(source if source.is_absolute() else layout.root / source, layout)
    # Package data of the pinned scikit-image: named by file (the venv's path differs per clone).
    photos = sorted(name for names in BUNDLED_PHOTOS.values() for name in names)
    return {"path": "bundled", "covers": [], "photos": {name: _sha1(bundled_dir() / name) for name in photos}}


def _tuned(params: Params, layout: Layout) -> dict:
    if params.loss_params.source != "tuned":
        return {"path": None, "covers": [], "source": params.loss_params.source}
    return describe_path(layout.tuned_params(params.dataset, params.loss), layout)


MANIFESTS = {
    "dataset": lambda params, layout: describe_path(params.selected.root, layout),
    "gt_masks": lambda params, layout: describe_path(params.selected.gt_masks, layout),
    "backgrounds": _backgrounds,
    "weights": lambda params, layout: describe_path(params.model.weights, layout),
    "tuned": _tuned,
}


def write_manifests(params: Params, layout: Layout, names: tuple[str, ...] = tuple(MANIFESTS)) -> dict[str, dict]:
    """`names`: the manifests to write (a grid writes per-dataset and shared ones apart)."""
    manifests = {name: MANIFESTS[name](params, layout) for name in names}
    for name, manifest in manifests.items():
        write_json(layout.input_manifest(name), manifest)
    return manifests


def weights_digest(model: ModelConfig) -> str:
    """The backbone's starting weights: the file's sha256, the pinned asset's, or none."""
    from bgbias.core.assets import ASSETS, sha256_of

    if model.weights is not None:
        if not model.weights.is_file():
            raise BgbiasError(f"model.weights not found: {model.weights}")
        return sha256_of(model.weights)
    if model.backbone == "efficientnet_lite0":
        return ASSETS["efficientnet_lite0"].sha256  # the pinned asset (its checksum is checked when loaded)
    return "random-init"


def training_inputs(params: Params, layout: Layout) -> dict[str, str]:
    """Content digests of what a training reads besides its config: the index (which records
    each image's sha1), the masks, the background pools and the backbone weights."""
    return {**data_inputs(params, layout), "weights": weights_digest(params.model)}


def data_inputs(params: Params, layout: Layout) -> dict[str, str]:
    """Content digests of the index, the masks and the background pools (what an evaluation reads)."""
    digests = {}
    for name, path, stage in (("index", layout.index_csv(params.dataset), "index"),
                              ("masks", layout.masks(params.dataset), "masks"),
                              ("backgrounds", layout.backgrounds, "backgrounds")):
        if not path.exists():
            raise BgbiasError(f"{path} not found (run `dvc repro {stage}`)")
        digests[name] = content_digest(path)[1]
    return digests
