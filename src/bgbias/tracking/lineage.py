"""What a run read, as MLflow dataset inputs (name, digest, profile, source): the training's
index and masks, and the evaluation's test split with its masks and background pools.

MLflow keeps one input per dataset (name + digest) and run, so the evaluation's is its own
dataset, `<dataset>-test`, whose digest also covers the background photos it was tested on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bgbias.core.config import Params
from bgbias.data.datasets import DatasetIndex
from bgbias.core.layout import Layout

COLUMNS = ["path", "class_id", "class_name", "split", "sha1"]  # the index csv's


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _source(params: Params, layout: Layout) -> str:
    # relpath: a bias-curve point's index may sit outside its own root (layout.PointLayout)
    return Path(os.path.relpath(layout.index_csv(params.dataset), layout.root)).as_posix()


def training_input(params: Params, layout: Layout, inputs: dict[str, str]) -> dict:
    """The dataset a training saw: a digest of the index's and the masks' content (the index
    records each image's sha1), split sizes. `inputs`: `inputs.training_inputs`."""
    summary = DatasetIndex.read(layout.index_csv(params.dataset), params.selected.root).summary()
    profile = {**{f"{split}_{k}": v for split, counts in summary["splits"].items() for k, v in counts.items()},
               "index_sha1": inputs["index"], "masks_sha1": inputs["masks"]}
    return {"name": params.dataset, "digest": _digest(inputs["index"], inputs["masks"]), "context": "training",
            "profile": profile, "source": _source(params, layout), "columns": COLUMNS}


def evaluation_input(params: Params, layout: Layout, inputs: dict[str, str], test_images: int, test_classes: int,
                     test_backgrounds: int) -> dict:
    """The test split an evaluation scored: index, masks and background pools by content,
    with the test split's size, the test pool's photos and the evaluation's draws."""
    profile = {"test_images": test_images, "test_classes": test_classes, "test_backgrounds": test_backgrounds,
               "replaced_draws": params.eval.replaced_draws, "index_sha1": inputs["index"],
               "masks_sha1": inputs["masks"], "backgrounds_sha1": inputs["backgrounds"]}
    return {"name": f"{params.dataset}-test", "digest": _digest(inputs["index"], inputs["masks"], inputs["backgrounds"]),
            "context": "evaluation", "profile": profile, "source": _source(params, layout), "columns": COLUMNS}
