"""The MLflow run of a training: documented params, per-epoch metrics, tags, checkpoint artifact."""

from __future__ import annotations

from pathlib import Path

from bgbias.core.config import load_params
from bgbias.engine.train import fit
from bgbias.core.layout import Layout
from bgbias.tracking.mlflow import MlflowTracker, flatten, project_store, tracking_uri
from tests.conftest import write_params


def test_training_run_is_logged_to_mlflow(tiny_project, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    params = load_params(write_params(tiny_project, {"train": {"epochs": 2}}))
    tracker = MlflowTracker.for_project(tiny_project)
    result = fit(params, Layout(tiny_project), "bgaugment", tracker, progress=False)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(tiny_project))
    experiment = client.get_experiment_by_name("synthetic")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "bgaugment-multi_similarity" and run.info.status == "FINISHED"
    assert {"mode": "bgaugment", "dataset": "synthetic", "loss": "multi_similarity",
            "backbone": "efficientnet_lite0", "dvc_exp_name": "tiny-exp"}.items() <= run.data.tags.items()
    p = run.data.params
    assert p["train.lr"] == "0.0001" and p["loss_params.alpha"] == "2.0" and p["model.embedding_dim"] == "128"
    assert p["data.train_classes"] == "4" and p["data.selection_metric"] == "val_replaced_map_at_r"
    for name in ("train_loss", "lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2]
    for name in ("val_map_at_r", "val_replaced_map_at_r"):  # epoch 0: the untrained start
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0, 1, 2]
    assert run.data.metrics["best_val_replaced_map_at_r"] == result["val_replaced_map_at_r"]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.pt"]
    assert Path(experiment.artifact_location.removeprefix("file://")).is_relative_to(tiny_project / "mlruns")


def test_store_of_a_dvc_temp_experiment_is_the_projects(tmp_path):
    workspace = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12"
    assert project_store(workspace) == (tmp_path / "proj" / "mlruns").resolve()
    assert project_store(tmp_path / "proj") == (tmp_path / "proj" / "mlruns").resolve()
    assert tracking_uri(tmp_path / "proj") == f"sqlite:///{(tmp_path / 'proj' / 'mlruns' / 'mlflow.db').resolve()}"


def test_flatten_params():
    assert flatten({"train": {"lr": 1e-5, "crop_scale": [0.16, 1.0]}, "loss": "triplet"}) == {
        "train.lr": "1e-05", "train.crop_scale": "[0.16, 1.0]", "loss": "triplet"}
