"""Where each stage writes, relative to the project root (the folder of params.yaml).

Stage outputs live outside `data/`, which data.dvc owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def synthetic(self) -> Path:
        return self.outputs / "synthetic"

    @property
    def backgrounds(self) -> Path:
        return self.outputs / "backgrounds"

    def input_manifest(self, name: str) -> Path:
        """outputs/inputs/<name>.json: the digest of an input from outside the pipeline (inputs.py)."""
        return self.outputs / "inputs" / f"{name}.json"

    def index_csv(self, dataset: str) -> Path:
        return self.outputs / "index" / f"{dataset}.csv"

    def masks(self, dataset: str) -> Path:
        return self.outputs / "masks" / dataset

    def prepared(self, dataset: str) -> Path:
        return self.outputs / "prepared" / dataset

    @property
    def masks_report(self) -> Path:
        return self.reports / "masks.json"

    @property
    def mask_quality_report(self) -> Path:
        return self.reports / "mask_quality.json"

    def train_dir(self, dataset: str, mode: str) -> Path:
        return self.outputs / "train" / dataset / mode

    def train_report(self, mode: str) -> Path:
        return self.reports / "train" / f"{mode}.json"

    def eval_dir(self, dataset: str) -> Path:
        return self.outputs / "eval" / dataset

    @property
    def metrics_report(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def attention_report(self) -> Path:
        return self.reports / "attention.json"

    def tuned_params(self, dataset: str, loss: str) -> Path:
        return self.root / "params" / "tuned" / dataset / f"{loss}.yaml"

    def tune_dir(self, dataset: str, loss: str) -> Path:
        return self.outputs / "tune" / dataset / loss
