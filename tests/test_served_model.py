"""The served embedder (no MLflow): evaluation's preprocessing and embeddings from raw RGB
images, pinned requirements."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bgbias.core.config import load_params
from bgbias.data.datasets import DatasetIndex
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.core.images import load_rgb
from bgbias.data.transforms import eval_transform
from bgbias.engine.device import device_setup
from bgbias.engine.embed import embed
from bgbias.core.layout import Layout
from bgbias.models import initial_model
from bgbias.tracking.served_model import REQUIREMENTS, ServedEmbedder, write_model_data
from tests.conftest import REPO, write_params


def test_requirements_are_the_pins_of_pyproject():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {re.split(r"[\[=]", p)[0].lower(): p.split("==")[1] for p in pins}
    for requirement in REQUIREMENTS:
        name, version = requirement.split("==")
        assert pins[name] == version, requirement


def test_served_embedder_equals_evaluation_on_raw_images(tiny_project, tmp_path):
    # resize 36 < the 40 px images: the resize and the centre crop both act.
    params = load_params(write_params(tiny_project, {"train": {"resize": 36, "crop": 32}}))
    layout = Layout(tiny_project)
    model = initial_model(params.model, params.assets_dir, params.seed)
    config = {"model": params.model.model_dump(mode="json"), "dataset": "synthetic", "loss": params.loss,
              "mode": "base"}
    best = {"model": model.state_dict(), "config": json.dumps(config), "epoch": 0, "metric": 0.5,
            "selection": "val_map_at_r"}
    folder = write_model_data(best, params.train.resize, params.train.crop, tmp_path / "model")
    served = ServedEmbedder(folder, device="cpu")

    index = DatasetIndex.read(layout.index_csv("synthetic"), params.selected.root)
    test_set = MaskedImageDataset(index.split("test"), index.root, layout.masks("synthetic"),
                                  eval_transform(params.train))
    setup = device_setup("cpu", 0)
    evaluated, _ = embed(model.to(memory_format=torch.channels_last).eval(), DataLoader(test_set, batch_size=16),
                         setup, progress=False)
    raw = np.stack([np.asarray(load_rgb(index.root / s.path)) for s in test_set.samples])  # uint8 [12, 40, 40, 3]
    got = served.predict(raw)
    assert got.shape == (12, 128) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # The same batch as evaluation's: identical; one image at a time: float rounding only.
    np.testing.assert_allclose(got, evaluated, rtol=0, atol=1e-5)
    np.testing.assert_allclose(served.predict(raw[:1])[0], evaluated[0], rtol=0, atol=1e-5)
    assert json.loads((Path(folder) / "settings.json").read_text())["resize"] == 36


def test_served_embedder_refuses_other_inputs(tiny_project, tmp_path):
    params = load_params(write_params(tiny_project))
    model = initial_model(params.model, params.assets_dir, params.seed)
    best = {"model": model.state_dict(), "epoch": 1, "metric": 0.1, "selection": "val_map_at_r",
            "config": json.dumps({"model": params.model.model_dump(mode="json"), "dataset": "synthetic",
                                  "loss": params.loss, "mode": "base"})}
    served = ServedEmbedder(write_model_data(best, 40, 32, tmp_path / "model"), device="cpu")
    with pytest.raises(ValueError, match="uint8 images of shape"):
        served.predict(np.zeros((1, 40, 40, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 images of shape"):
        served.predict(np.zeros((40, 40, 3), dtype=np.uint8))


def test_registry_name_and_alias_of_a_training(tiny_project):
    from types import SimpleNamespace

    from bgbias.engine.train import served_model

    params = load_params(write_params(tiny_project))
    item = torch.arange(4 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).view(4, 32, 32)
    run = SimpleNamespace(mode="bgaugment", val_set=[(item, 0, 0), (item, 0, 1), (item, 1, 2)])
    study = served_model(run, params, Layout(tiny_project))
    assert (study["registered_name"], study["alias"]) == ("bgbias-synthetic-multi_similarity", "bgaugment")
    assert study["example"].shape == (2, 32, 32, 3) and study["example"].dtype == np.uint8
    assert np.array_equal(study["example"][0], item[:3].permute(1, 2, 0).numpy())  # RGB, mask channel dropped
    # A run of the seeds pipeline leaves the default study's aliases alone.
    assert served_model(run, params, Layout(tiny_project).for_seed(2))["alias"] == "bgaugment-seed2"
