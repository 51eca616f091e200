"""fit() on a tiny project: metrics, checkpoints, resume, determinism, both modes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bgbias import stages
from bgbias.config import load_params
from bgbias.engine.train import fit
from bgbias.errors import BgbiasError
from bgbias.layout import Layout
from bgbias.models import initial_model
from bgbias.report import training_check
from tests.conftest import write_params


def _fit(root, mode="base", tracker=None, resume=False, **overrides):
    params = load_params(write_params(root, overrides))
    return fit(params, Layout(root), mode, tracker, resume=resume, progress=False)


def _history(root, mode="base"):
    state = torch.load(root / "outputs" / "train" / "synthetic" / mode / "last.pt", weights_only=True)
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in state["history"]]


def test_fit_returns_metrics_and_writes_checkpoints(tiny_project):
    result = _fit(tiny_project)
    assert result["mode"] == "base" and result["selection_metric"] == "val_map_at_r"
    assert 1 <= result["best_epoch"] <= result["epochs_run"] == 3
    assert 0.0 < result["val_map_at_r"] <= 1.0 and 0.0 < result["val_replaced_map_at_r"] <= 1.0
    assert json.loads((tiny_project / "reports" / "train" / "base.json").read_text()) == result

    out = tiny_project / "outputs" / "train" / "synthetic" / "base"
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert best["epoch"] == result["best_epoch"] and best["metric"] == result["val_map_at_r"]
    assert last["finished"] and last["epoch"] == 3 and [h["epoch"] for h in last["history"]] == [0, 1, 2, 3]
    assert "embedding.weight" in best["model"] and json.loads(best["config"])["loss"] == "multi_similarity"
    assert not list(out.glob("*.partial"))


def test_bgaugment_selects_on_replaced_backgrounds(tiny_project):
    result = _fit(tiny_project, mode="bgaugment", train={"epochs": 2})
    assert result["selection_metric"] == "val_replaced_map_at_r"
    history = _history(tiny_project, "bgaugment")
    assert result["val_replaced_map_at_r"] == max(h["val_replaced_map_at_r"] for h in history if h["epoch"] > 0)


def test_same_seed_gives_identical_metrics_on_cpu(tiny_project, tmp_path):
    first = _fit(tiny_project)
    history = _history(tiny_project)
    second = _fit(tiny_project)
    assert _history(tiny_project) == history
    assert {k: v for k, v in first.items() if k != "train_seconds"} == \
        {k: v for k, v in second.items() if k != "train_seconds"}


class KilledAfterEpoch:
    """A tracker that dies when the given epoch's metrics arrive, i.e. right after that
    epoch's checkpoint was written, like a SIGKILL at the start of the next epoch."""

    run_id = None

    def __init__(self, epoch):
        self.epoch = epoch

    def start(self, *args, **kwargs):
        return None

    def log_metrics(self, metrics, step=None):
        if step == self.epoch:
            raise KeyboardInterrupt("killed")

    def log_artifact(self, *args, **kwargs):
        pass

    def set_tags(self, tags):
        pass

    def finish(self, status="FINISHED"):
        pass


def test_resume_after_kill_reproduces_the_uninterrupted_run(tiny_project):
    uninterrupted = _fit(tiny_project)
    expected = _history(tiny_project)

    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_project, tracker=KilledAfterEpoch(2))
    assert [h["epoch"] for h in _history(tiny_project)] == [0, 1, 2]
    resumed = _fit(tiny_project, resume=True)

    assert _history(tiny_project) == expected
    assert {k: v for k, v in resumed.items() if k != "train_seconds"} == \
        {k: v for k, v in uninterrupted.items() if k != "train_seconds"}


def test_resume_ignores_a_checkpoint_of_another_configuration(tiny_project, caplog):
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_project, tracker=KilledAfterEpoch(1))
    result = _fit(tiny_project, resume=True, train={"lr": 2e-4})
    assert result["epochs_run"] == 3
    assert "different configuration" in caplog.text


def test_batch_needing_more_classes_than_the_split_has_is_a_clear_error(tiny_project):
    with pytest.raises(BgbiasError, match="batch_size"):
        _fit(tiny_project, train={"batch_size": 16, "m_per_class": 2})


class RecordingTracker(KilledAfterEpoch):
    def __init__(self):
        super().__init__(epoch=-1)
        self.tags, self.steps = {}, []

    def log_metrics(self, metrics, step=None):
        self.steps.append(step)

    def set_tags(self, tags):
        self.tags.update(tags)


def test_training_that_makes_validation_worse_is_flagged(tmp_path):
    # 64 px images, where the untrained ImageNet features already retrieve above chance
    # (at the tiny project's 32 px they are at chance, so nothing could get worse).
    root = tmp_path / "project"
    root.mkdir()
    overrides = {"synthetic": {"classes": {"train": 4, "val": 3, "test": 3}, "images_per_class": 4,
                               "image_size": 64, "workers": 1},
                 # A destructive learning rate: RMSprop at 0.5 wrecks the pretrained backbone.
                 "train": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 8, "m_per_class": 2, "lr": 0.5,
                           "lr_embedding": 0.5, "resize": 64, "crop": 64, "eval_batch_size": 16}}
    params, layout = load_params(write_params(root, overrides)), Layout(root)
    for stage in (stages.synthetic, stages.backgrounds, stages.index):
        stage(params, layout)
    shutil.copytree(layout.synthetic / "masks", layout.masks("synthetic"))
    tracker = RecordingTracker()
    result = fit(params, layout, "base", tracker, progress=False)

    assert tracker.steps[0] == 0  # the untrained start is the first point of the curve
    assert result["val_map_at_r"] < result["epoch0_val_map_at_r"]
    assert result["beats_epoch0"] is False and tracker.tags == {"beats_epoch0": "false"}
    assert "FLAG: training did not beat its untrained start" in training_check({"base": result})


def test_warmup_epochs_freeze_the_backbone(tiny_project):
    _fit(tiny_project, train={"epochs": 1, "warmup_epochs": 1})
    trained = torch.load(tiny_project / "outputs" / "train" / "synthetic" / "base" / "best.pt",
                         weights_only=True)["model"]
    params = load_params(tiny_project / "params.yaml")
    start = initial_model(params.model, params.assets_dir, params.seed).state_dict()
    trunk = [k for k in start if k.startswith("trunk.") and start[k].is_floating_point()]
    assert trunk and all(torch.equal(trained[k], start[k]) for k in trunk)
    assert not torch.equal(trained["embedding.weight"], start["embedding.weight"])
