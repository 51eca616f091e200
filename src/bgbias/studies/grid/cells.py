"""The paper's grid (pipelines/paper/): datasets x losses x modes, one cell each.

A cell runs the default pipeline's code (train, evaluate, attribute) on one (dataset,
loss, mode), with its files in folders of its own (layout.py) and its MLflow run in the
experiment `paper-grid`, tagged with the cell's id and fingerprint. The fingerprint covers
everything the cell's numbers depend on: the training's config and inputs (the training
fingerprint that `--resume` checks), the evaluation and attribution settings. A cell is
*done* when its latest finished run carries the current fingerprint; a done run with
another fingerprint makes it *stale*. The status lives in MLflow, so cells finished on
other machines (a shared tracking server) count, and a done cell is never run again.

The data every cell of a dataset reads (input manifests, index, masks; the background
pools once) is prepared before its cells (`prepare`), once per dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bgbias import stages
from bgbias.core.config import Params
from bgbias.core.errors import BgbiasError
from bgbias.core.files import write_json
from bgbias.data.inputs import training_inputs, write_manifests
from bgbias.core.layout import Layout
from bgbias.tracking.mlflow import Tracker

log = logging.getLogger(__name__)

STUDY = "paper"
EXPERIMENT = "paper-grid"
PARAMS_FILE = Path("pipelines") / STUDY / "params.yaml"
STEPS = ("train", "evaluate", "attribute")
PREPARE_STEPS = ("inputs", "backgrounds", "index", "masks")


@dataclass(frozen=True)
class Cell:
    index: int
    dataset: str
    loss: str
    mode: str

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.loss}/{self.mode}"


def project_root(params_path: Path) -> Path:
    """The DVC project holding the params file (the folder with `.dvc`), else the working folder."""
    for folder in Path(params_path).resolve().parents:
        if (folder / ".dvc").is_dir():
            return folder
    return Path.cwd().resolve()


@dataclass(frozen=True)
class Grid:
    params: Params
    root: Path

    @classmethod
    def load(cls, params_path: Path | str = PARAMS_FILE, root: Path | None = None) -> Grid:
        """The grid's params file; its relative paths are the project's (as in its dvc.yaml)."""
        from bgbias.core import config  # looked up at call time (tests record the params read)

        root = Path(root) if root else project_root(Path(params_path))
        params = config.load_params(params_path, base=root)
        if params.paper is None:
            raise BgbiasError(f"{params_path}: no `paper` section (the grid's datasets, losses and modes)")
        return cls(params, root)

    @property
    def layout(self) -> Layout:
        return Layout(self.root, study=STUDY, base=self.params.paper.storage)

    def cells(self) -> list[Cell]:
        grid = self.params.paper
        names = [(d, loss, m) for d in grid.datasets for loss in grid.losses for m in grid.modes]
        return [Cell(i, *name) for i, name in enumerate(names)]

    def select(self, ids: Iterable[str] = (), shard: tuple[int, int] | None = None) -> list[Cell]:
        """Cells by id or index (`grid list` shows both), or shard i of n (cells i, i+n, ...)."""
        cells, chosen = self.cells(), []
        for key in ids:
            match = [c for c in cells if c.id == key or str(c.index) == str(key)]
            if not match:
                raise BgbiasError(f"no cell '{key}' in the grid of {PARAMS_FILE} (`bgbias grid list` shows them)")
            chosen += match
        if shard is not None:
            i, n = shard
            if not 0 <= i < n:
                raise BgbiasError(f"--shard {i}/{n}: expected i/n with 0 <= i < n")
            chosen += [c for c in cells if c.index % n == i]
        return chosen if (ids or shard) else cells

    def cell(self, cell_id: str) -> Cell:
        """A cell named by id, without listing the grid (a DVC stage of one cell reads only its params)."""
        from bgbias.core.config import LOSSES, MODES

        parts = cell_id.split("/")
        if len(parts) != 3 or parts[1] not in LOSSES or parts[2] not in MODES:
            raise BgbiasError(f"cell '{cell_id}': expected <dataset>/<loss>/<mode> with a loss of {', '.join(LOSSES)} "
                              f"and a mode of {', '.join(MODES)}")
        try:
            self.params.datasets[parts[0]]
        except KeyError:
            raise BgbiasError(f"cell '{cell_id}': no dataset '{parts[0]}' under `datasets`") from None
        return Cell(-1, *parts)

    def dataset_params(self, dataset: str) -> Params:
        return self.params.model_copy(update={"dataset": dataset})

    def training_params(self, dataset: str) -> Params:
        """A dataset's params with the grid's backbone: `auto` is bninception when
        model.weights is given (the paper's network), else efficientnet_lite0."""
        backbone = self.params.paper.backbone
        if backbone == "auto":
            backbone = "bninception" if self.params.model.weights is not None else "efficientnet_lite0"
        params = self.dataset_params(dataset)
        return params.model_copy(update={"model": params.model.model_copy(update={"backbone": backbone})})

    def cell_params(self, cell: Cell) -> Params:
        if self.params.loss_params.source != "paper":
            raise BgbiasError("loss_params.source: the grid trains with the paper's loss values (`paper`); tune and "
                              "train one (dataset, loss) pair with the default pipeline instead")
        if self.params.prepare.enabled:
            raise BgbiasError("prepare.enabled: the grid reads the images themselves (it builds no prepared store)")
        return self.training_params(cell.dataset).model_copy(update={"loss": cell.loss})

    def cell_layout(self, cell: Cell) -> Layout:
        return self.layout.for_cell(cell.dataset, cell.loss, cell.mode)


# ---- identity -------------------------------------------------------------------------


def _sha(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    config: str  # the cell's settings alone (what a machine without the data can check)
    training: str | None  # train.training_fingerprint: config + content of the inputs (None: not prepared here)
    cell: str | None  # training + evaluation and attribution settings

    def tags(self) -> dict[str, str]:
        return {"grid_config_fingerprint": self.config, "grid_train_fingerprint": self.training or "",
                "grid_fingerprint": self.cell or ""}


def fingerprint(grid: Grid, cell: Cell, inputs: dict[str, str] | None = None) -> Fingerprint:
    """`inputs`: training_inputs of the cell's dataset when computed already (once per dataset)."""
    from bgbias.engine.train import run_config, training_fingerprint

    params, layout = grid.cell_params(cell), grid.cell_layout(cell)
    evaluation = {"eval": params.eval.model_dump(mode="json"),
                  "attribution": params.attribution.model_dump(mode="json")}
    config = _sha({"config": run_config(params, cell.mode, layout), **evaluation})
    if inputs is None:
        return Fingerprint(config, None, None)
    training = training_fingerprint(params, layout, cell.mode, inputs)
    return Fingerprint(config, training, _sha({"training": training, **evaluation}))


def dataset_inputs(grid: Grid, dataset: str) -> dict[str, str] | None:
    """training_inputs of a dataset, or None where its data is not prepared on this machine."""
    params, layout = grid.training_params(dataset), grid.layout.for_dataset(dataset)
    try:
        return training_inputs(params, layout)
    except BgbiasError:
        return None


def fingerprints(grid: Grid, cells: list[Cell]) -> dict[str, Fingerprint]:
    inputs = {d: dataset_inputs(grid, d) for d in dict.fromkeys(c.dataset for c in cells)}
    return {c.id: fingerprint(grid, c, inputs[c.dataset]) for c in cells}


# ---- status -----------------------------------------------------------------------------

STATUSES = ("done", "running", "failed", "stale", "missing")


def cell_status(runs, fp: Fingerprint) -> tuple[str, str | None]:
    """(status, run id) of one cell from its runs (a DataFrame, newest first). Where the data
    is not prepared here, the config fingerprint stands in for the full one."""
    if runs.empty:
        return "missing", None
    key, value = ("tags.grid_fingerprint", fp.cell) if fp.cell else ("tags.grid_config_fingerprint", fp.config)
    current = runs[runs[key] == value] if key in runs else runs.iloc[0:0]
    state = current["tags.grid_status"] if "tags.grid_status" in current else None
    if state is not None and (state == "done").any():
        return "done", current[state == "done"].iloc[0]["run_id"]
    if fp.training and "tags.grid_train_fingerprint" in runs:
        current = runs[runs["tags.grid_train_fingerprint"] == fp.training]
    if "tags.grid_status" in current:  # a done run of other settings is stale, not in progress
        current = current[current["tags.grid_status"] != "done"]
    if not current.empty:
        latest = current.iloc[0]
        if latest.get("tags.grid_status") == "failed":
            return "failed", latest["run_id"]
        return "running", latest["run_id"]  # or killed: `grid run` resumes it
    if "tags.grid_status" in runs and (runs["tags.grid_status"] == "done").any():
        return "stale", runs[runs["tags.grid_status"] == "done"].iloc[0]["run_id"]
    return "missing", None


def grid_runs(tracker: Tracker):
    return tracker.search_runs(EXPERIMENT, {"grid_study": STUDY})


def statuses(grid: Grid, cells: list[Cell], runs) -> list[dict]:
    """One row per cell: index, cell, status, run_id (the run it stands on), fingerprint;
    `runs`: `grid_runs` (a DataFrame)."""
    fps = fingerprints(grid, cells)
    rows = []
    for cell in cells:
        own = runs[runs["tags.grid_cell"] == cell.id] if "tags.grid_cell" in runs else runs.iloc[0:0]
        status, run_id = cell_status(own, fps[cell.id])
        rows.append({"index": cell.index, "cell": cell.id, "status": status, "run_id": run_id,
                     "fingerprint": (fps[cell.id].cell or fps[cell.id].config)[:12],
                     "inputs_here": fps[cell.id].cell is not None})
    return rows


# ---- preparing the data -----------------------------------------------------------------


def prepare_step(grid: Grid, step: str | None, dataset: str | None = None) -> None:
    """One preparation step (a DVC stage of pipelines/paper/): the default pipeline's stage
    function with the grid's layout; `inputs` writes every dataset's manifests."""
    if step is None:  # all of them, for every dataset of the grid
        return prepare(grid, grid.params.paper.datasets, echo=print)
    if step == "inputs":
        write_manifests(grid.params, grid.layout, names=("backgrounds", "weights"))
        for name in grid.params.paper.datasets:
            write_manifests(grid.dataset_params(name), grid.layout.for_dataset(name), names=("dataset",))
    elif step == "backgrounds":
        stages.backgrounds(grid.params, grid.layout)
    elif step in ("index", "masks"):
        if dataset is None:
            raise BgbiasError(f"grid prepare {step}: --dataset is required")
        # It names folders: checked before any is made; .get reads only the stage's declared datasets.<name>.
        if grid.params.datasets.get(dataset) is None:
            raise BgbiasError(f"grid prepare {step}: --dataset {dataset!r} is not one of the grid's datasets "
                              f"(paper.datasets: {', '.join(grid.params.paper.datasets)})")
        getattr(stages, step)(grid.dataset_params(dataset), grid.layout.for_dataset(dataset))
    else:
        raise BgbiasError(f"unknown preparation step '{step}'; allowed: {', '.join(PREPARE_STEPS)}")


def _stamp_key(grid: Grid, step: str, dataset: str | None) -> str:
    """What a preparation step's output depends on: its manifests and params sections."""
    layout, params = grid.layout, grid.params
    if step == "backgrounds":
        return _sha([json.loads(layout.input_manifest("backgrounds").read_text()),
                     params.backgrounds.model_dump(mode="json"), params.data_seed])
    scoped = layout.for_dataset(dataset)
    parts = [json.loads(scoped.input_manifest("dataset").read_text()),
             params.datasets[dataset].model_dump(mode="json"), params.index.model_dump(mode="json")]
    if step == "masks":
        parts += [params.masks.model_dump(mode="json"), (layout.index_csv(dataset)).read_text()]
    return _sha(parts)


def _prepare_once(grid: Grid, step: str, dataset: str | None, echo: Callable[[str], None]) -> None:
    stamp = grid.layout.outputs / "stamps" / f"{dataset or 'all'}-{step}.json"
    key = _stamp_key(grid, step, dataset)
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return
    echo(f"prepare {step}{f' {dataset}' if dataset else ''}")
    prepare_step(grid, step, dataset)
    write_json(stamp, {"key": key})


def prepare_shared(grid: Grid, echo: Callable[[str], None] = log.info) -> None:
    """The input manifests and the background pools, for every dataset."""
    prepare_step(grid, "inputs")
    _prepare_once(grid, "backgrounds", None, echo)


def prepare_dataset(grid: Grid, dataset: str, echo: Callable[[str], None] = log.info) -> None:
    """Index and masks of one dataset (after `prepare_shared`)."""
    for step in ("index", "masks"):
        _prepare_once(grid, step, dataset, echo)


def prepare(grid: Grid, datasets: Iterable[str], echo: Callable[[str], None] = log.info) -> None:
    """Everything the cells of `datasets` read, each step done only when what it depends on
    changed since it last ran here (a stamp under outputs/paper/stamps/)."""
    prepare_shared(grid, echo)
    for dataset in dict.fromkeys(datasets):
        prepare_dataset(grid, dataset, echo)
