"""`dvc exp run -S loss=...` retrains with the new loss and only what depends on it
(the real dvc.yaml in a throwaway git repository with a tiny params.yaml)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ASSETS, REPO, TINY_TRAIN


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-600:]}"
    return done.stdout


def test_exp_run_with_another_loss_retrains_only_the_training(tmp_path):
    if not all((ASSETS / name).is_file() for name in ("u2netp.onnx", "efficientnet-lite0-57934424.pth")):
        pytest.skip("offline assets not fetched: run `make setup`")
    repo = tmp_path / "study"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo)
    shutil.copytree(ASSETS, repo / "data" / "assets")
    # DVC wants every params section that dvc.yaml declares to be present.
    params = {**TINY_TRAIN, "assets_dir": "data/assets",
              "train": {**TINY_TRAIN["train"], "epochs": 1, "device": "cpu", "workers": 0}, "masks": {"workers": 1},
              "backgrounds": {**TINY_TRAIN["backgrounds"], "source": "bundled"},
              "mask_quality": {"threshold": 128}, "prepare": {"enabled": False},
              "model": {"backbone": "efficientnet_lite0", "embedding_dim": 128, "weights": None},
              "loss_params": {"source": "paper"}, "eval": {"replaced_draws": 1},
              "attribution": {"images": 4, "batch_size": 2, "noisy_copies": 2, "figure_rows": 2},
              "data_seed": 0, "tracking": {"uri": None}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/data\n/mlruns\n")
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["dvc", "repro", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline"], repo)
    assert json.loads((repo / "reports" / "train" / "base.json").read_text())["loss"] == "multi_similarity"

    out = _run(["dvc", "exp", "run", "-S", "loss=contrastive"], repo)
    assert "Running stage 'train@base'" in out and "Running stage 'train@bgaugment'" in out
    assert "Running stage 'masks'" not in out and "Running stage 'synthetic'" not in out
    assert "Running stage 'evaluate'" in out and "Running stage 'report'" in out  # downstream of training
    for mode in ("base", "bgaugment"):
        report = json.loads((repo / "reports" / "train" / f"{mode}.json").read_text())
        assert report["loss"] == "contrastive" and report["epochs_run"] == 1

    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    text = json.dumps(shown)
    assert "val_map_at_r" in text and "contrastive" in text

    from mlflow.tracking import MlflowClient

    from bgbias.tracking.mlflow import tracking_uri

    client = MlflowClient(tracking_uri(repo))  # each training registered its model under its loss
    for loss in ("multi_similarity", "contrastive"):
        assert set(client.get_registered_model(f"bgbias-synthetic-{loss}").aliases) == {"base", "bgaugment"}
