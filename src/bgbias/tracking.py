"""Experiment tracking. The only module that imports MLflow; the rest of the code gets a
`Tracker` passed in (a `NullTracker` when tracking is off).

Store: `sqlite:///<project>/mlruns/mlflow.db` with artifacts under `<project>/mlruns/`,
an experiment per dataset, a run per training. The path is absolute and, when a stage
runs inside a DVC temp/queued experiment workspace (`<project>/.dvc/tmp/exps/...`), it
points at the project itself, so every experiment lands in one store.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

DVC_TEMP_WORKSPACE = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


class Tracker(Protocol):
    run_id: str | None

    def start(self, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_run_id: str | None = None) -> str | None: ...

    def attach(self, run_id: str) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing (tests, `--no-track`)."""

    run_id = None

    def start(self, experiment, run_name, params, tags, resume_run_id=None):
        return None

    def attach(self, run_id):
        return None

    def log_metrics(self, metrics, step=None):
        return None

    def log_artifact(self, path, artifact_path=None):
        return None

    def set_tags(self, tags):
        return None

    def finish(self, status="FINISHED"):
        return None


def project_store(project_root: Path) -> Path:
    """`<project>/mlruns`, seen through a DVC temp experiment workspace if we are in one."""
    root = str(Path(project_root).resolve())
    if DVC_TEMP_WORKSPACE in root + os.sep:
        root = root.split(DVC_TEMP_WORKSPACE)[0]
    return Path(root) / "mlruns"


def tracking_uri(project_root: Path) -> str:
    return f"sqlite:///{project_store(project_root) / 'mlflow.db'}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 1e-5}} -> {'train.lr': '1e-05'}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def context_tags(project_root: Path) -> dict[str, str]:
    """git commit and, under `dvc exp run`, the DVC experiment name."""
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        log.debug("no git commit to tag (git missing or too slow)")
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


class MlflowTracker:
    def __init__(self, uri: str, artifact_root: Path):
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri
        self.artifact_root = Path(artifact_root)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None

    @classmethod
    def for_project(cls, project_root: Path) -> MlflowTracker:
        store = project_store(project_root)
        store.mkdir(parents=True, exist_ok=True)
        return cls(tracking_uri(project_root), store / "artifacts")

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name, artifact_location=(self.artifact_root / name).as_uri())

    def start(self, experiment, run_name, params, tags, resume_run_id=None):
        from mlflow.entities import Param

        if resume_run_id:
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
            return self.run_id
        run = self.client.create_run(self._experiment_id(experiment), run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return self.run_id

    def attach(self, run_id):
        """Log into an existing (finished) run, e.g. test metrics of a training run."""
        self.run_id = run_id

    def log_metrics(self, metrics, step=None):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path, artifact_path=None):
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags):
        from mlflow.entities import RunTag

        if self.run_id:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status="FINISHED"):
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
