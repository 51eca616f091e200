"""The paper grid on Ray: wall time of a tiny grid with 1 and with 2 Ray workers, and the
cost of the paper-scale grid estimated from per-image costs measured here.

1. Scaling: the tests' tiny grid (CUB-200- and SOP-format sets of rendered photos, 1 epoch
   x 1 iteration at 32 px; `--datasets/--losses` pick its size) is prepared once, then run
   from scratch through `bgbias.studies.grid.ray.run_on_ray` on a local Ray cluster of N workers
   (N x `cpus_per_cell` CPUs) for each N in `--workers`. Prints wall time per N, speed-up,
   and each cell's wall time from its MLflow run.
2. Paper scale (an ESTIMATE, nothing of it run): images pushed through the network per cell
   (training steps, validation every epoch, the test evaluation of the trained model and
   the untrained start over the draws, SmoothGrad copies) from the paper's sizes in
   pipelines/paper/params.yaml and the datasets' published image counts, times seconds per
   image of a train step and of an embedding at 227 px measured on this machine's CPU.
   A GPU's figures are not measured here: pass `--gpu-train-ips/--gpu-embed-ips` (images/s
   from benchmarks/train_throughput.py on the GPU) to print GPU-hours from them.

    python benchmarks/grid_scaling.py --workers 1 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' tiny grid project (tests/grid_project.py)

# Published image counts (train+val classes / test classes) of the paper's datasets.
DATASETS = {"cars196": (8054, 8131), "cub200": (5864, 5924), "sop": (59551, 60502)}
VAL_SHARE = {"cars196": 24 / 98, "cub200": 25 / 100, "sop": 2829 / 11318}  # val classes of train+val


def run_scaling(workers: list[int], datasets: list[str], losses: list[str]) -> None:
    import pandas as pd
    import ray

    from bgbias.studies.grid.cells import Grid, grid_runs, prepare
    from bgbias.studies.grid.ray import run_on_ray
    from bgbias.tracking.mlflow import MlflowTracker
    from tests.grid_project import grid_params, make_grid_project, write_grid_params

    base = Path(tempfile.mkdtemp(prefix="bgbias-grid-bench-"))
    try:
        prepared = make_grid_project(base / "prepared", datasets=datasets, losses=losses)
        params = grid_params(datasets, losses, ["base", "bgaugment"])
        params["paper"]["cluster"]["cpus_per_cell"] = 1  # N workers = N CPUs (and N torch threads)
        write_grid_params(prepared, params)
        grid = Grid.load(prepared / "pipelines/paper/params.yaml", root=prepared)
        start = time.perf_counter()
        prepare(grid, grid.params.paper.datasets)
        print(f"prepare (inputs, pools, index, masks of {len(datasets)} dataset(s)): "
              f"{time.perf_counter() - start:.1f} s")
        cpus = grid.params.paper.cluster.cpus_per_cell
        walls = {}
        for n in workers:
            project = prepared.parent / f"workers{n}"  # beside the project: its data paths are ../outside/...
            shutil.copytree(prepared, project, ignore=shutil.ignore_patterns("mlruns"))
            grid = Grid.load(project / "pipelines/paper/params.yaml", root=project)
            ray.init(num_cpus=int(n * cpus), include_dashboard=False, log_to_driver=False)
            try:
                start = time.perf_counter()
                outcome = run_on_ray(grid, project / "pipelines/paper/params.yaml", grid.cells(), None,
                                     echo=lambda line: "failed:" in line and print(line), poll_seconds=5)
                walls[n] = time.perf_counter() - start
            finally:
                ray.shutdown()
            runs = grid_runs(MlflowTracker.for_project(project))
            done = runs[runs.get("tags.grid_status", pd.Series(dtype=str)) == "done"]
            per_cell = (done["end_time"] - done["start_time"]) / 1000
            print(f"{n} worker(s): {len(grid.cells())} cells in {walls[n]:.1f} s wall "
                  f"({sum(v == 'done' for v in outcome.values())} done); training runs "
                  f"{per_cell.mean():.1f} s mean, {per_cell.min():.1f}-{per_cell.max():.1f} s")
        if 1 in walls:
            for n, wall in walls.items():
                print(f"speed-up with {n} worker(s): {walls[1] / wall:.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def measured_seconds_per_image(crop: int, batch: int, iterations: int) -> tuple[float, float]:
    """(train step, embedding) seconds per image of EfficientNet-Lite0 at `crop` px on this CPU."""
    import torch

    from bgbias.core.config import ModelConfig
    from bgbias.losses.registry import create_loss
    from bgbias.models import create_model

    torch.manual_seed(0)
    model = create_model(ModelConfig(), REPO / "data" / "assets", pretrained=False)
    loss = create_loss("multi_similarity", {"alpha": 2.0, "beta": 50.0, "base": 0.5}, 8, 128).loss
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-6)
    x, y = torch.rand(batch, 3, crop, crop), torch.arange(batch) % (batch // 4)

    def train():
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()

    def embed():
        with torch.no_grad():
            model.eval()(x)
        model.train()

    out = []
    for step in (train, embed):
        step()  # warm-up
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        out.append((time.perf_counter() - start) / (iterations * batch))
    return out[0], out[1]


def paper_workload(dataset: str, epochs: int, iterations: int, batch: int, draws: int, attribution: int,
                   copies: int) -> tuple[float, float]:
    """(images through a train step, images embedded or attributed) of one cell."""
    trainval, test = DATASETS[dataset]
    val = trainval * VAL_SHARE[dataset]
    trained = epochs * iterations * batch
    # Validation (clean + replaced); on test the trained model and the untrained start (its two references share a pass).
    embedded = (epochs + 1) * 2 * val + 2 * (1 + draws) * test
    attributed = 2 * attribution * copies * 2  # forward + backward ~ 2 embeddings, clean and replaced
    return trained, embedded + attributed


def estimate(args: argparse.Namespace) -> None:
    from bgbias.core.config import load_params

    params = load_params(REPO / "pipelines/paper/params.yaml", base=REPO)
    t = params.train
    train_s, embed_s = measured_seconds_per_image(t.crop, 16, args.iterations)
    print(f"\nmeasured on this CPU (EfficientNet-Lite0, {t.crop} px): train step {1 / train_s:.1f} images/s, "
          f"embedding {1 / embed_s:.1f} images/s")
    print(f"ESTIMATE of the paper-scale grid ({len(params.paper.losses)} losses x {len(params.paper.modes)} modes "
          f"per dataset; {args.epochs} epochs of {t.iterations_per_epoch} x {t.batch_size} "
          f"{'(the upper bound: early stopping ends sooner)' if args.epochs == t.epochs else ''}):")
    cells = len(params.paper.losses) * len(params.paper.modes)
    total_cpu = total_gpu = 0.0
    for dataset in params.paper.datasets:
        trained, embedded = paper_workload(dataset, args.epochs, t.iterations_per_epoch, t.batch_size,
                                           params.eval.replaced_draws, params.attribution.images,
                                           params.attribution.noisy_copies)
        cpu_h = (trained * train_s + embedded * embed_s) / 3600
        total_cpu += cells * cpu_h
        line = (f"  {dataset}: per cell {trained / 1e3:.0f}k images trained, {embedded / 1e3:.0f}k embedded -> "
                f"{cpu_h:.1f} CPU-hours on this machine (estimate)")
        if args.gpu_train_ips and args.gpu_embed_ips:
            gpu_h = (trained / args.gpu_train_ips + embedded / args.gpu_embed_ips) / 3600
            total_gpu += cells * gpu_h
            line += f", {gpu_h:.2f} GPU-hours at the given GPU throughputs (estimate)"
        print(line)
    print(f"  whole grid: {total_cpu:.0f} CPU-hours (estimate); GPU-hours: "
          + (f"{total_gpu:.1f} (estimate from the given throughputs)" if total_gpu else
             "GPU not measured (pass --gpu-train-ips/--gpu-embed-ips from benchmarks/train_throughput.py on a GPU)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray workers to time (none: skip)")
    parser.add_argument("--datasets", nargs="+", default=["cub"], choices=("cub", "sop"))
    parser.add_argument("--losses", nargs="+", default=["triplet", "multi_similarity"])
    parser.add_argument("--epochs", type=int, default=100, help="paper scale: epochs per training (default: the bound)")
    parser.add_argument("--iterations", type=int, default=3, help="timed CPU steps per measurement")
    parser.add_argument("--gpu-train-ips", type=float, help="GPU train-step images/s (measured elsewhere)")
    parser.add_argument("--gpu-embed-ips", type=float, help="GPU embedding images/s (measured elsewhere)")
    args = parser.parse_args()
    if args.workers:
        run_scaling(args.workers, args.datasets, args.losses)
    estimate(args)


if __name__ == "__main__":
    main()
