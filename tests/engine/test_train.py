"""fit() on a tiny project: metrics, checkpoints, resume, determinism, both modes."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from bgbias import stages
from bgbias.core.config import load_params
from bgbias.engine.train import fit
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout
from bgbias.models import initial_model
from bgbias.reporting.results import training_check
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

    def log_dataset(self, dataset):
        pass

    def log_model(self, *args, **kwargs):
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


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_resume_without_its_best_model_trains_afresh_to_the_same_end(tiny_project, caplog, damage):
    # last.pt alone cannot finish a run: the best model so far is in best.pt. Gone or
    # damaged, the run starts again (a warning says why) and ends as the uninterrupted one.
    uninterrupted = _fit(tiny_project, train={"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_project, tracker=KilledAfterEpoch(1), train={"epochs": 2})
    best = tiny_project / "outputs" / "train" / "synthetic" / "base" / "best.pt"
    if damage == "deleted":
        best.unlink()
    else:
        best.write_bytes(best.read_bytes()[:100])
    resumed = _fit(tiny_project, resume=True, train={"epochs": 2})
    assert "training starts from scratch" in caplog.text
    assert {k: v for k, v in resumed.items() if k != "train_seconds"} == \
        {k: v for k, v in uninterrupted.items() if k != "train_seconds"}
    assert torch.load(best, weights_only=True)["epoch"] == resumed["best_epoch"]


def _landings(monkeypatch, kill_at: int | None = None) -> list[str]:
    """Record every file landing (os.replace ends each atomic write and the best.pt commit);
    with `kill_at`, die just before the kill_at-th, as a SIGKILL there would."""
    landed: list[str] = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        landed.append(os.path.basename(dst))
        if len(landed) == kill_at:
            raise KeyboardInterrupt(f"killed before {dst} landed")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return landed


def _outcome(root, result):
    best = torch.load(root / "outputs" / "train" / "synthetic" / "base" / "best.pt", weights_only=True)
    tensors = {f"{part}.{k}": v for part in ("model", "loss") for k, v in best[part].items()}
    return (_history(root), {k: v for k, v in result.items() if k != "train_seconds"},
            {k: v for k, v in best.items() if k not in ("model", "loss")}, tensors)


# early_stop: epochs 1 and 2 score the same (a learning rate of 1e-12 changes nothing), so
# patience 1 stops the run after epoch 2 of 3: a kill between the stop decision and the
# finished flag used to let --resume train epoch 3.
RUNS = {"early_stop": {"train": {"epochs": 3, "patience": 1, "lr": 1e-12, "lr_embedding": 1e-12}},
        "three_epochs": {"train": {"epochs": 3}}}


@pytest.mark.parametrize("run", ["early_stop", pytest.param("three_epochs", marks=pytest.mark.slow)])
def test_a_kill_before_any_write_then_resume_equals_the_uninterrupted_run(tiny_project, tmp_path, monkeypatch, run):
    overrides = RUNS[run]
    reference = tmp_path / "reference"
    shutil.copytree(tiny_project, reference)
    with monkeypatch.context() as patch:
        landed = _landings(patch)
        expected = _outcome(reference, _fit(reference, **overrides))
    assert {"base.json", "last.pt", "best.pt"} <= set(landed)
    if run == "early_stop":
        assert expected[1]["stopped_early"] and expected[1]["epochs_run"] == 2

    for kill_at in range(1, len(landed) + 1):
        root = tmp_path / f"killed-{kill_at}"
        shutil.copytree(tiny_project, root)
        with monkeypatch.context() as patch:
            _landings(patch, kill_at)
            with pytest.raises(KeyboardInterrupt):
                _fit(root, **overrides)
        history, result, best, tensors = _outcome(root, _fit(root, resume=True, **overrides))
        where = f"killed before write {kill_at} ({landed[kill_at - 1]})"
        assert (history, result, best) == expected[:3], where
        assert tensors.keys() == expected[3].keys() and all(torch.equal(v, expected[3][k]) for k, v in tensors.items()), \
            where
        assert not list((root / "outputs" / "train" / "synthetic" / "base").glob("*.pending")), where


def test_best_checkpoint_commit_is_finished_or_dropped_on_resume(tmp_path):
    from bgbias.models.checkpoint import recover_best, save_checkpoint, save_epoch

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_epoch(last, {"epoch": 1, "best_epoch": 1}, best, {"epoch": 1, "w": torch.ones(2)})
    assert torch.load(best, weights_only=True)["epoch"] == 1 and not (tmp_path / "best.pt.pending").exists()
    # Killed between the pending best (epoch 2) and last.pt: last.pt names epoch 1, so the pending one goes.
    save_checkpoint(tmp_path / "best.pt.pending", {"epoch": 2, "w": torch.zeros(2)})
    recover_best(best, best_epoch=1)
    assert torch.load(best, weights_only=True)["epoch"] == 1 and not (tmp_path / "best.pt.pending").exists()
    # Killed after last.pt (naming epoch 2) but before the rename: the commit is finished.
    save_checkpoint(tmp_path / "best.pt.pending", {"epoch": 2, "w": torch.zeros(2)})
    recover_best(best, best_epoch=2)
    assert torch.load(best, weights_only=True)["epoch"] == 2
    recover_best(best, best_epoch=None)  # a fresh start keeps no best.pt of an older run
    assert not best.exists()


@pytest.mark.parametrize("change", ["mask", "background", "tuned"])
def test_resume_starts_afresh_when_an_input_changed(tiny_project, caplog, change):
    # The fingerprint used to cover the config and the index only: a run resumed after the
    # masks or the background pools changed was half old, half new.
    tuned = tiny_project / "params" / "tuned" / "synthetic" / "multi_similarity.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text("loss_params: {alpha: 2.0, beta: 50.0, base: 0.5}\n")
    overrides = {"loss_params": {"source": "tuned"}, "train": {"epochs": 2}}
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_project, tracker=KilledAfterEpoch(1), **overrides)
    if change == "mask":
        mask = sorted((tiny_project / "outputs" / "masks" / "synthetic").rglob("*.png"))[0]
        mask.write_bytes(mask.read_bytes() + b"\0")  # another mask file (trailing byte: same pixels)
    elif change == "background":
        photo = sorted((tiny_project / "outputs" / "backgrounds" / "train").glob("*.jpg"))[0]
        photo.write_bytes(photo.read_bytes() + b"\0")
    else:
        tuned.write_text("loss_params: {alpha: 2.0, beta: 40.0, base: 0.5}\n")
    result = _fit(tiny_project, resume=True, **overrides)
    assert "different configuration" in caplog.text and "resuming" not in caplog.text
    assert result["epochs_run"] == 2 and [h["epoch"] for h in _history(tiny_project)] == [0, 1, 2]


def test_a_tuned_lr_replaces_train_lr(tiny_project):
    tuned = tiny_project / "params" / "tuned" / "synthetic" / "multi_similarity.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text("loss_params: {alpha: 2.0, beta: 50.0, base: 0.5}\nlr: 2.5e-4\n")
    _fit(tiny_project, train={"epochs": 1}, loss_params={"source": "tuned"})
    best = torch.load(tiny_project / "outputs" / "train" / "synthetic" / "base" / "best.pt", weights_only=True)
    config = json.loads(best["config"])
    assert config["train"]["lr"] == 2.5e-4 and config["loss_params"] == {"alpha": 2.0, "beta": 50.0, "base": 0.5}
    assert _history(tiny_project)[-1]["lr"] == 2.5e-4
    tuned.write_text("loss_params: {alpha: 2.0, beta: 50.0, base: 0.5}\n")  # lr not searched: train.lr stays
    _fit(tiny_project, train={"epochs": 1}, loss_params={"source": "tuned"})
    assert _history(tiny_project)[-1]["lr"] == 1e-4


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


def test_prepared_input_trains_and_validates_on_the_same_pixels(tiny_project):
    # prepare.enabled: the stored val images are today's bit for bit, so the untouched
    # model's validation (epoch 0, clean and replaced) is identical; training crops differ.
    _fit(tiny_project, mode="bgaugment", train={"epochs": 1})
    default = _history(tiny_project, "bgaugment")
    params = load_params(write_params(tiny_project, {"prepare": {"enabled": True}}))
    assert stages.prepare(params, Layout(tiny_project))["enabled"]
    _fit(tiny_project, mode="bgaugment", train={"epochs": 1}, prepare={"enabled": True})
    prepared = _history(tiny_project, "bgaugment")
    assert prepared[0] == default[0] and [h["epoch"] for h in prepared] == [0, 1]
    assert prepared[1]["train_loss"] != default[1]["train_loss"]  # other crops: another first step
