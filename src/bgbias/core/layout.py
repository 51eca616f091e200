"""Where each stage writes, relative to the project root (the folder of params.yaml).

Stage outputs live outside `data/`, which data.dvc owns. The shared inputs (synthetic set,
backgrounds, index, masks) have one place; a training's outputs (checkpoints, evaluation,
reports) have their own folders per run of the seeds pipeline (`seed_run`), so runs of
several training seeds never overwrite one another.

A study of its own (`study`, e.g. the paper grid of pipelines/paper/) writes under
`outputs/<study>/` and `reports/<study>/` (below `base`, shared storage, when given), so it
never touches the default study's files. Within it, `dataset` scopes the per-dataset files
(input manifests, masks report) and `cell` = (loss, mode) gives a grid cell folders of its
own: `outputs/<study>/cells/<dataset>/<loss>/<mode>/{train,eval}/` and
`reports/<study>/cells/<dataset>/<loss>/<mode>/`, so no cell overwrites another's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path
    seed_run: int | None = None  # a run of pipelines/seeds: training seed N in outputs/seeds/seedN/
    study: str | None = None
    base: Path | None = None  # where outputs/ and reports/ live (default: root)
    dataset: str | None = None
    cell: tuple[str, str] | None = None  # (loss, mode) of a grid cell of `dataset`

    def for_seed(self, seed: int) -> Layout:
        return Layout(self.root, seed_run=seed)

    @property
    def outputs(self) -> Path:
        folder = (self.base or self.root) / "outputs"
        return folder / self.study if self.study else folder

    @property
    def reports(self) -> Path:
        folder = (self.base or self.root) / "reports"
        return folder / self.study if self.study else folder

    @property
    def figures(self) -> Path:
        return self._cell_reports / "figures" if self.cell else self.run_reports / "figures"

    def for_dataset(self, dataset: str) -> Layout:
        return replace(self, dataset=dataset, cell=None)

    def for_cell(self, dataset: str, loss: str, mode: str) -> Layout:
        return replace(self, dataset=dataset, cell=(loss, mode))

    @property
    def cell_id(self) -> str:
        """`<dataset>/<loss>/<mode>`: the cell's name everywhere (CLI, folders, MLflow tag)."""
        return f"{self.dataset}/{self.cell[0]}/{self.cell[1]}"

    @property
    def _cell_outputs(self) -> Path:
        return self.outputs / "cells" / self.cell_id

    @property
    def _cell_reports(self) -> Path:
        return self.reports / "cells" / self.cell_id

    def _check_cell(self, dataset: str, mode: str) -> None:
        if self.cell and (dataset, mode) != (self.dataset, self.cell[1]):
            raise ValueError(f"cell {self.cell_id} has no files of {dataset}/{mode}")

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
        folder = self.outputs / "inputs"
        return (folder / self.dataset if self.dataset else folder) / f"{name}.json"

    def index_csv(self, dataset: str) -> Path:
        return self.outputs / "index" / f"{dataset}.csv"

    def masks(self, dataset: str) -> Path:
        return self.outputs / "masks" / dataset

    def prepared(self, dataset: str) -> Path:
        return self.outputs / "prepared" / dataset

    @property
    def masks_report(self) -> Path:
        return self.reports / "masks" / f"{self.dataset}.json" if self.dataset else self.reports / "masks.json"

    @property
    def mask_quality_report(self) -> Path:
        return self.reports / "mask_quality.json"

    def train_dir(self, dataset: str, mode: str) -> Path:
        if self.cell:
            self._check_cell(dataset, mode)
            return self._cell_outputs / "train"
        return self.run_outputs / "train" / dataset / mode

    def train_report(self, mode: str) -> Path:
        if self.cell:
            self._check_cell(self.dataset, mode)
            return self._cell_reports / "train.json"
        return self.run_reports / "train" / f"{mode}.json"

    def eval_dir(self, dataset: str) -> Path:
        return self._cell_outputs / "eval" if self.cell else self.run_outputs / "eval" / dataset

    @property
    def metrics_report(self) -> Path:
        return self._cell_reports / "metrics.json" if self.cell else self.run_reports / "metrics.json"

    @property
    def conditions_figure(self) -> Path:
        """One example row per background-swap test condition (the evaluate stage)."""
        return self.figures / "conditions.png"  # a grid cell: its own folder

    @property
    def attention_report(self) -> Path:
        return self._cell_reports / "attention.json" if self.cell else self.run_reports / "attention.json"

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
