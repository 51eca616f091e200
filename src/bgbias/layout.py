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
    def conditions_figure(self) -> Path:
        """One example row per background-swap test condition (the evaluate stage)."""
        return self.run_reports / "figures" / "conditions.png"

    @property
    def attention_report(self) -> Path:
        return self.run_reports / "attention.json"

    def tuned_params(self, dataset: str, loss: str) -> Path:
        return self.root / "params" / "tuned" / dataset / f"{loss}.yaml"

    def tune_dir(self, dataset: str, loss: str) -> Path:
        return self.outputs / "tune" / dataset / loss

    def curve_points(self, curve: str) -> Path:
        return self.outputs / "bias_curve" / curve

    def curve_point(self, curve: str, value: str) -> Path:
        """outputs/bias_curve/<curve>/<value as written in params.yaml>/ (DVC names the
        folder so): a bias-curve point's own outputs/ and reports/."""
        return self.curve_points(curve) / value

    @property
    def bias_curve_reports(self) -> Path:
        return self.reports / "bias_curve"


@dataclass(frozen=True)
class PointLayout(Layout):
    """A bias-curve point: a project of its own under `root` (outputs/, reports/) that
    reads the background pools and tuned params of `project`, and with `own_data` False
    also its index and masks (the bgaugment_p curve trains on the default data)."""

    project: Path = Path(".")
    own_data: bool = True

    @property
    def backgrounds(self) -> Path:
        return Layout(self.project).backgrounds

    def tuned_params(self, dataset: str, loss: str) -> Path:
        return Layout(self.project).tuned_params(dataset, loss)

    def input_manifest(self, name: str) -> Path:
        return Layout(self.project).input_manifest(name)

    def index_csv(self, dataset: str) -> Path:
        return super().index_csv(dataset) if self.own_data else Layout(self.project).index_csv(dataset)

    def masks(self, dataset: str) -> Path:
        return super().masks(dataset) if self.own_data else Layout(self.project).masks(dataset)

    def prepared(self, dataset: str) -> Path:
        return super().prepared(dataset) if self.own_data else Layout(self.project).prepared(dataset)
