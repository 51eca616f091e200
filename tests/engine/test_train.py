"""fit() on a tiny project: metrics, checkpoints, resume, determinism, both modes."""

from __future__ import annotations

import json

import pytest
import torch

from bgbias.config import load_params
from bgbias.engine.train import fit
from bgbias.errors import BgbiasError
from bgbias.layout import Layout
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
    assert last["finished"] and last["epoch"] == 3 and len(last["history"]) == 3
    assert "embedding.weight" in best["model"] and json.loads(best["config"])["loss"] == "multi_similarity"
    assert not list(out.glob("*.partial"))


def test_bgaugment_selects_on_replaced_backgrounds(tiny_project):
    result = _fit(tiny_project, mode="bgaugment", train={"epochs": 2})
    assert result["selection_metric"] == "val_replaced_map_at_r"
    history = _history(tiny_project, "bgaugment")
    assert result["val_replaced_map_at_r"] == max(h["val_replaced_map_at_r"] for h in history)


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

    def finish(self, status="FINISHED"):
        pass


def test_resume_after_kill_reproduces_the_uninterrupted_run(tiny_project):
    uninterrupted = _fit(tiny_project)
    expected = _history(tiny_project)

    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_project, tracker=KilledAfterEpoch(2))
    assert len(_history(tiny_project)) == 2
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
