"""Where each stage writes, relative to the project root (the folder of params.yaml).

Stage outputs live outside `data/`, which data.dvc owns. The shared inputs (synthetic set,
backgrounds, index, masks) have one place; a training's outputs (checkpoints, evaluation,
reports) have their own folders per run of the seeds pipeline (`seed_run`), so runs of
several training seeds never overwrite one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path
    seed_run: int | None = None  # a run of pipelines/seeds: training seed N in outputs/seeds/seedN/

    def for_seed(self, seed: int) -> Layout:
        return Layout(self.root, seed_run=seed)

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def seeds_reports(self) -> Path:
        """reports/seeds/: the seeds pipeline's summary over its runs (runs/seedN/ per run)."""
        return self.reports / "seeds"

    @property
    def run_outputs(self) -> Path:
        return self.outputs if self.seed_run is None else self.outputs / "seeds" / f"seed{self.seed_run}"

    @property
    def run_reports(self) -> Path:
        return self.reports if self.seed_run is None else self.seeds_reports / "runs" / f"seed{self.seed_run}"

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
        return self.run_outputs / "train" / dataset / mode

    def train_report(self, mode: str) -> Path:
        return self.run_reports / "train" / f"{mode}.json"

    def eval_dir(self, dataset: str) -> Path:
        return self.run_outputs / "eval" / dataset

    @property
    def metrics_report(self) -> Path:
        return self.run_reports / "metrics.json"

    @property
    def attention_report(self) -> Path:
        return self.run_reports / "attention.json"

    def tuned_params(self, dataset: str, loss: str) -> Path:
        return self.root / "params" / "tuned" / dataset / f"{loss}.yaml"

    def tune_dir(self, dataset: str, loss: str) -> Path:
        return self.outputs / "tune" / dataset / loss
