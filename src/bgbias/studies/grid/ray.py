"""`bgbias grid run --ray ADDRESS`: the grid's cells as Ray tasks on a cluster. The only
module that imports Ray (the optional extra `.[cluster]`).

One task prepares what every dataset shares (input manifests, background pools), one per
dataset its index and masks, then one task per cell that is not done, each asking for
`paper.cluster.cpus_per_cell` CPUs and `gpus_per_cell` GPUs; a cell's task waits for its
dataset's. A task whose worker dies (node lost, process killed) is run again by Ray, up to
`max_retries` times, and resumes the cell's training from its last epoch. Every task logs
to `tracking.uri` and writes under `paper.storage`: on several machines, a tracking server
and a folder all of them mount at the same path, as the project itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from bgbias.core.errors import BgbiasError
from bgbias.studies.grid.cells import Cell, Grid, prepare_dataset, prepare_shared
from bgbias.studies.grid.run import pending, run_if_pending
from bgbias.tracking.mlflow import MlflowTracker

log = logging.getLogger(__name__)


def _tracker_factory(grid: Grid):
    return lambda: MlflowTracker.for_project(grid.root, grid.params.tracking.uri, check=False)


# Task bodies: plain functions, wrapped by ray.remote at submission (no Ray at import).

def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for name in ("PML", "faiss.loader"):  # per-call chatter, as the CLI mutes it
        logging.getLogger(name).setLevel(logging.WARNING)


def _prepare_shared_task(params_path: str, root: str) -> None:
    _logging()
    prepare_shared(Grid.load(params_path, Path(root)))


def _prepare_dataset_task(params_path: str, root: str, dataset: str, _shared: None) -> str:
    _logging()
    prepare_dataset(Grid.load(params_path, Path(root)), dataset)
    return dataset


def _cell_task(params_path: str, root: str, cell_id: str, _dataset: str) -> str:
    _logging()
    grid = Grid.load(params_path, Path(root))
    return run_if_pending(grid, grid.select([cell_id])[0], _tracker_factory(grid), progress=False)


def connect(address: str | None):
    """Join the Ray cluster at `address` ("auto": the one this machine belongs to); a session
    already started in this process (tests: `ray.init(num_cpus=2)`) is used as it is."""
    try:
        import ray
    except ImportError:
        raise BgbiasError("--ray needs Ray: pip install -e '.[cluster]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as exc:
            raise BgbiasError(f"no Ray cluster at {address} ({exc})") from None
    return ray


def run_on_ray(grid: Grid, params_path: Path, cells: list[Cell], address: str | None,
               echo: Callable[[str], None] = print, poll_seconds: float = 30.0) -> dict[str, str]:
    """Submit the cells that are not done and wait for all; {cell id: outcome}."""
    ray = connect(address)
    cfg = grid.params.paper.cluster
    todo = pending(grid, cells, _tracker_factory(grid)())
    outcome = {c.id: "skipped (done)" for c in cells if c not in todo}
    if not todo:
        return outcome
    args = (str(Path(params_path).resolve()), str(grid.root))
    shared = ray.remote(_prepare_shared_task).options(num_cpus=1, max_retries=cfg.max_retries).remote(*args)
    prep = ray.remote(_prepare_dataset_task).options(num_cpus=cfg.cpus_per_prepare, max_retries=cfg.max_retries)
    ready = {d: prep.remote(*args, d, shared) for d in dict.fromkeys(c.dataset for c in todo)}
    task = ray.remote(_cell_task).options(num_cpus=cfg.cpus_per_cell, num_gpus=cfg.gpus_per_cell,
                                          max_retries=cfg.max_retries, retry_exceptions=False)
    refs = {task.remote(*args, c.id, ready[c.dataset]): c.id for c in todo}
    echo(f"submitted {len(refs)} cell(s) to Ray ({len(outcome)} already done)")
    waiting, start = list(refs), time.monotonic()
    while waiting:
        finished, waiting = ray.wait(waiting, num_returns=1, timeout=poll_seconds)
        for ref in finished:
            try:
                outcome[refs[ref]] = ray.get(ref)
            except Exception as exc:  # the cell's error, or its worker died more than max_retries times
                cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the task's own exception
                outcome[refs[ref]] = f"failed: {type(cause).__name__}: {str(cause).splitlines()[0][:300]}"
            echo(f"cell {refs[ref]}: {outcome[refs[ref]]}")
        failed = sum(v.startswith("failed") for v in outcome.values())
        echo(f"cells: {len(outcome) - failed} done, {failed} failed, {len(waiting)} running or queued "
             f"({time.monotonic() - start:.0f} s)")
    return outcome
