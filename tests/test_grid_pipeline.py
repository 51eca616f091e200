"""The tiny paper grid (2 datasets in the CUB-200 and SOP formats x 2 losses x 2 modes, 1
epoch x 1 iteration) through `dvc repro pipelines/paper/dvc.yaml` and through a local Ray
cluster started here, with one cell's worker killed mid-training: Ray runs that cell again
and both give the same report. Minutes on 2 cores: slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bgbias import cli
from bgbias.studies.grid.cells import Grid
from tests.conftest import ASSETS
from tests.grid_project import make_grid_project

pytestmark = pytest.mark.slow

PARAMS = Path("pipelines/paper/params.yaml")


@pytest.fixture
def offline_assets():
    if not all((ASSETS / n).is_file() for n in ("u2netp.onnx", "efficientnet-lite0-57934424.pth")):
        pytest.skip("offline assets not fetched: run `make setup`")


def _report(root: Path, monkeypatch) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    monkeypatch.chdir(root)
    assert cli.main(["grid", "report"]) == 0
    reports = root / "reports" / "paper"
    return ((reports / "results.md").read_text(), pd.read_csv(reports / "table1.csv"),
            pd.read_csv(reports / "table2.csv"))


def _held_train_lock(root: Path) -> int | None:
    """PID of a process holding a cell's training lock now (/proc/locks: read, not taken)."""
    inodes = {os.stat(p).st_ino: p for p in (root / "outputs/paper/cells").glob("*/*/*/.train.lock")}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and int(fields[5].split(":")[-1]) in inodes:
            return int(fields[4])
    return None


def _kill_first_training(root: Path, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        if (root / "outputs/paper/cells").is_dir() and (pid := _held_train_lock(root)):
            os.kill(pid, signal.SIGKILL)  # the Ray worker running the cell, mid-training
            killed.append(pid)
            return
        time.sleep(0.2)


def test_tiny_grid_through_dvc_and_ray_gives_one_report(tmp_path, monkeypatch, offline_assets):
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install -e '.[cluster]')")
    from bgbias.studies.grid.ray import run_on_ray

    with_dvc = make_grid_project(tmp_path / "dvc")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["dvc", "repro", "pipelines/paper/dvc.yaml"], cwd=with_dvc, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dvc_report = _report(with_dvc, monkeypatch)

    with_ray = make_grid_project(tmp_path / "ray")
    grid = Grid.load(with_ray / PARAMS, root=with_ray)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_training, args=(with_ray, killed, stop), daemon=True)
    ray.init(num_cpus=2, include_dashboard=False)  # one cell at a time (2 CPUs each), as DVC runs them
    try:
        killer.start()
        outcome = run_on_ray(grid, with_ray / PARAMS, grid.cells(), None, poll_seconds=5)
    finally:
        stop.set()
        ray.shutdown()
    assert killed, "no cell's training was caught running"
    assert set(outcome.values()) == {"done"}, outcome
    ray_report = _report(with_ray, monkeypatch)

    assert "8 done (of 8 cells)" in ray_report[0]
    assert ray_report[0] == dvc_report[0]
    pd.testing.assert_frame_equal(ray_report[1], dvc_report[1])
    pd.testing.assert_frame_equal(ray_report[2], dvc_report[2])

    # a second run finds every cell done and runs none
    monkeypatch.chdir(with_ray)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert set(run_on_ray(grid, with_ray / PARAMS, grid.cells(), None).values()) == {"skipped (done)"}
    finally:
        ray.shutdown()
