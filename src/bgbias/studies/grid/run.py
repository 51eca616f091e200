"""Running grid cells: one cell's steps (the default pipeline's train, evaluate and
attribute on the cell's folders), and a selection of cells one after another on this
machine. `grid_ray.py` runs them as Ray tasks instead."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable

from bgbias.models.checkpoint import load_checkpoint
from bgbias.core.errors import BgbiasError
from bgbias.studies.grid.cells import (EXPERIMENT, STEPS, STUDY, Cell, Grid, dataset_inputs, fingerprint, grid_runs, prepare,
                         statuses)
from bgbias.core.process_guard import hold_folder
from bgbias.tracking.mlflow import Tracker

log = logging.getLogger(__name__)

TrackerFactory = Callable[[], Tracker]


def _finished_training(out_dir, training_fp: str) -> bool:
    """A finished training of this very configuration and data is there: reuse it (a rerun of
    a cell whose evaluation or attribution settings changed, or a retried cell killed later)."""
    last = out_dir / "last.pt"
    if not last.is_file():
        return False
    state = load_checkpoint(last)
    return bool(state.get("finished")) and state.get("fingerprint") == training_fp and (out_dir / "best.pt").is_file()


def _attach(tracker: Tracker, layout, cell: Cell) -> bool:
    from bgbias.evaluation.retrieval import attach_training_run

    return attach_training_run(tracker, layout, cell.dataset, cell.mode)


def run_cell(grid: Grid, cell: Cell, new_tracker: TrackerFactory, steps: tuple[str, ...] = STEPS,
             progress: bool = True) -> dict:
    """Run `steps` of one cell; the last step (attribute) marks its MLflow run done with the
    current fingerprint. A failure tags the run failed and is raised again."""
    from bgbias.attribution.stage import attribute_trained
    from bgbias.evaluation.retrieval import evaluate_trained
    from bgbias.engine.train import RunTarget, fit, training_fingerprint

    params, layout = grid.cell_params(cell), grid.cell_layout(cell)
    inputs = _prepared_inputs(grid, cell) if {"train", "attribute"} & set(steps) else None
    tags = {"grid_study": STUDY, "grid_cell": cell.id}
    train_dir = layout.train_dir(cell.dataset, cell.mode)
    result: dict = {"cell": cell.id}
    try:
        if "train" in steps:
            training = training_fingerprint(params, layout, cell.mode, inputs)  # evaluation settings aside
            with hold_folder(train_dir):  # one writer per cell, however many drivers run
                kept = train_dir / "report.json"  # the training's report, kept with its checkpoints
                report = layout.train_report(cell.mode)
                if _finished_training(train_dir, training) and kept.is_file():
                    log.info("cell %s: reusing its finished training in %s", cell.id, train_dir)
                    shutil.copyfile(kept, report)
                else:
                    target = RunTarget(experiment=EXPERIMENT, run_name=cell.id,
                                       tags={**tags, "grid_train_fingerprint": training, "grid_status": "training"})
                    result["train"] = fit(params, layout, cell.mode, new_tracker(), resume=True, progress=progress,
                                          target=target)
                    shutil.copyfile(report, kept)
        if "evaluate" in steps:
            result["evaluate"] = evaluate_trained(params, layout, new_tracker(), progress, modes=(cell.mode,))
        if "attribute" in steps:
            result["attribute"] = attribute_trained(params, layout, new_tracker(), progress, modes=(cell.mode,))
            _mark_done(new_tracker(), layout, cell, {**tags, **fingerprint(grid, cell, inputs).tags()})
    except Exception as exc:
        tracker = new_tracker()
        if train_dir.joinpath("last.pt").is_file() and _attach(tracker, layout, cell):
            tracker.set_tags({"grid_status": "failed", "grid_error": f"{type(exc).__name__}: {exc}"[:500]})
        raise
    return result


def _prepared_inputs(grid: Grid, cell: Cell) -> dict[str, str]:
    inputs = dataset_inputs(grid, cell.dataset)
    if inputs is None:
        raise BgbiasError(f"cell {cell.id}: the data of '{cell.dataset}' is not prepared under {grid.layout.outputs} "
                          "(run `bgbias grid prepare` or `dvc repro pipelines/paper/dvc.yaml`)")
    return inputs


def _mark_done(tracker: Tracker, layout, cell: Cell, tags: dict[str, str]) -> None:
    if not _attach(tracker, layout, cell):
        log.warning("cell %s: its training was not tracked, so `grid list` and `grid report` cannot see it", cell.id)
        return
    attention = json.loads(layout.attention_report.read_text())["modes"][cell.mode]
    tracker.log_metrics({f"test_attention_{c}_std": v["std"] for c, v in attention.items()})
    tracker.set_tags({**tags, "grid_status": "done"})


def pending(grid: Grid, cells: list[Cell], tracker: Tracker) -> list[Cell]:
    """The cells not done with their current fingerprint (missing, stale, failed, running or killed)."""
    done = {row["cell"] for row in statuses(grid, cells, grid_runs(tracker)) if row["status"] == "done"}
    return [c for c in cells if c.id not in done]


def run_if_pending(grid: Grid, cell: Cell, new_tracker: TrackerFactory, progress: bool = True) -> str:
    """Run a cell unless it is done with its current fingerprint (checked again here, at its
    start: another driver or an earlier attempt of this task may have finished it)."""
    if not pending(grid, [cell], new_tracker()):
        return "skipped (done)"
    run_cell(grid, cell, new_tracker, progress=progress)
    return "done"


def run_local(grid: Grid, cells: list[Cell], new_tracker: TrackerFactory, echo: Callable[[str], None] = print,
              progress: bool = True) -> dict[str, str]:
    """Run the selected cells that are not done, one after another; a failed cell does not
    stop the others. Returns {cell id: done | failed: reason | skipped (done)}."""
    todo = pending(grid, cells, new_tracker())
    outcome = {c.id: "skipped (done)" for c in cells if c not in todo}
    prepare(grid, [c.dataset for c in todo], echo=echo)
    for n, cell in enumerate(todo, 1):
        echo(f"cell {cell.id} ({n}/{len(todo)}): running")
        try:
            outcome[cell.id] = run_if_pending(grid, cell, new_tracker, progress)
        except BgbiasError as exc:
            outcome[cell.id] = f"failed: {exc}"
        echo(f"cell {cell.id}: {outcome[cell.id]}")
    return outcome
