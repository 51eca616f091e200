"""Training logs to a real MLflow tracking server (on PostgreSQL, artifacts through its
proxy), and goes on when the server is lost mid-run: the updates are kept and sent later."""

from __future__ import annotations

import json
import logging

from bgbias.cli import main
from bgbias.core.config import load_params
from bgbias.engine.train import RunTarget, fit
from bgbias.core.layout import Layout
from bgbias.tracking.mlflow import UNSENT, MlflowTracker, project_store
from tests.conftest import write_params
from tests.services.conftest import start_server

TRAINING_METRICS = ("train_loss", "lr")  # epochs 1..3
VALIDATION_METRICS = ("val_map_at_r", "val_replaced_map_at_r")  # epoch 0 (untrained) too


def _assert_curves(client, run_id):
    for name in TRAINING_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2, 3]
    for name in VALIDATION_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, name)] == [0, 1, 2, 3]


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_training_logs_params_metrics_and_checkpoint_to_the_server(mlflow_server, tiny_project):
    params = load_params(write_params(tiny_project, {"tracking": {"uri": mlflow_server.uri}}))
    tracker = MlflowTracker.for_project(tiny_project, params.tracking.uri)
    result = fit(params, Layout(tiny_project), "base", tracker, progress=False)

    client = _client(mlflow_server.uri)
    experiment = client.get_experiment_by_name("synthetic")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's proxy, no shared disk
    run = client.get_run(tracker.run_id)  # (the session's server holds other tests' runs too)
    assert run.info.experiment_id == experiment.experiment_id and run.info.status == "FINISHED"
    assert run.info.run_name == "base-multi_similarity"
    assert run.data.params["train.lr"] == "0.0001" and run.data.params["data.train_classes"] == "4"
    assert run.data.tags["mode"] == "base" and run.data.tags["dataset"] == "synthetic"
    _assert_curves(client, run.info.run_id)
    report = json.loads(Layout(tiny_project).train_report("base").read_text())
    assert run.data.metrics["best_val_map_at_r"] == result["val_map_at_r"] == report["val_map_at_r"]

    # The checkpoint went through the proxy into the server's artifact folder, byte for byte.
    best = Layout(tiny_project).train_dir("synthetic", "base") / "best.pt"
    stored = list(mlflow_server.artifacts.rglob(f"{run.info.run_id}/artifacts/checkpoints/best.pt"))
    assert len(stored) == 1 and stored[0].read_bytes() == best.read_bytes()
    assert not (project_store(tiny_project) / "artifacts").exists()  # nothing written to the local store


def test_a_server_lost_mid_run_gets_the_kept_updates_later(postgres, tiny_project, tmp_path, caplog):
    server = start_server(postgres, "mlflow_lost", tmp_path / "server")
    try:
        params = load_params(write_params(tiny_project, {"tracking": {"uri": server.uri}}))
        tracker = MlflowTracker.for_project(tiny_project, server.uri)

        def lose_server(epoch, metrics):
            if epoch == 1:
                server.stop()

        with caplog.at_level(logging.WARNING, logger="bgbias.tracking.mlflow"):
            result = fit(params, Layout(tiny_project), "base", tracker, progress=False,
                         target=RunTarget(on_epoch=lose_server))
        assert result["epochs_run"] == 3  # training went on
        assert any("unreachable" in r.getMessage() and "kept and retried" in r.getMessage() for r in caplog.records)
        spool = project_store(tiny_project) / UNSENT
        (kept,) = spool.glob("*.json")
        ops = [op["op"] for op in json.loads(kept.read_text())["ops"]]
        # Epochs 2 and 3, (tags,) the best values, the checkpoint, the model, the end, in order.
        assert ops[:2] == ["metrics", "metrics"] and ops[-4:] == ["metrics", "artifact", "model", "finish"]

        server.start()  # same port, same database
        assert main(["--params", str(tiny_project / "params.yaml"), "sync"]) == 0
        assert not list(spool.glob("*.json"))
        client = _client(server.uri)
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED"
        _assert_curves(client, run.info.run_id)
        assert run.data.metrics["best_val_map_at_r"] == result["val_map_at_r"]
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
        version = client.get_model_version_by_alias("bgbias-synthetic-multi_similarity", "base")
        assert version.run_id == run.info.run_id  # the kept model was logged and registered once it was back
        assert not list((spool / "files").glob("*"))  # the kept checkpoint copy is gone once sent
    finally:
        server.stop()
