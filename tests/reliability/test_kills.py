"""kill -9 at seeded random points of the masks stage and of training (slow): after N kills
and a last uninterrupted run the outputs equal those of a run never killed, no temp file
is left, and nothing outside the stage's outputs changed. (Tuning's kill loop is not here:
trials a kill fails are counted against `tune.n_trials`, a tuning.py matter.)"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import object_image, write_params
from tests.reliability.conftest import Probe, assert_ok, assert_only_changed

pytestmark = pytest.mark.slow
KILLS = 5
TIMEOUT = 900  # seconds a run may take on a loaded machine


def run_killed_when(project: Path, args: list[str], ready: Callable[[float], bool], delay: float) -> bool:
    """Start `bgbias args`; once `ready(start time)` holds, wait `delay` s and SIGKILL its
    process group. True if the kill landed before the run ended."""
    cmd = [sys.executable, "-m", "bgbias", "--params", str(project / "params.yaml"), *args]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = started + TIMEOUT
    while proc.poll() is None and not ready(started) and time.time() < deadline:
        time.sleep(0.02)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def written_since(folder: Path, pattern: str, started: float) -> int:
    return sum(1 for p in folder.rglob(pattern) if p.stat().st_mtime >= started)


def test_masks_stage_killed_at_random_points(probe, assets_dir):
    root = probe.project / "data" / "ds"
    rows = ["path,label"]
    for i in range(48):
        object_image(root / f"c{i % 4}" / f"{i}.png", size=40, seed=i)
        rows.append(f"c{i % 4}/{i}.png,c{i % 4}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    probe.params({"format": "csv", "root": str(root),
                  "class_split": {"train": {"first": 1, "last": 2}, "val": {"first": 3, "last": 4}}})
    assert_ok(probe.run("index"))
    reference = probe.tmp / "reference"  # folder mode makes the same masks
    assert_ok(probe.run("masks", str(root), str(reference), "--assets-dir", str(assets_dir), timeout=TIMEOUT))

    out = probe.project / "outputs" / "masks" / "ds"
    before = probe.snapshot()
    rng = random.Random(0)
    # Each run is killed once it has written a seeded random number of masks (1-4), after a
    # seeded random pause (0-0.3 s): mid-inference, mid-write or between mask and record.
    landed = sum(run_killed_when(probe.project, ["masks"],
                                 lambda started, k=rng.randint(1, 4): written_since(out, "*.png", started) >= k,
                                 rng.uniform(0, 0.3)) for _ in range(KILLS))
    assert_ok(probe.run("masks", timeout=TIMEOUT))
    assert_only_changed(before, probe.snapshot(), "project/outputs/masks", "project/reports")
    assert landed == KILLS
    masks = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert masks == sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*.png"))
    for name in masks:
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(reference / name))), name
    assert sorted(json.loads((out / "source_hashes.json").read_text())["sources"]) == masks
    assert not list(out.rglob("*.partial")) and not (out / "source_hashes.journal").exists()


def _history(project: Path) -> list[dict]:
    state = torch.load(project / "outputs/train/synthetic/base/last.pt", weights_only=True)
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in state["history"]]


def test_training_killed_at_random_points(tiny_project, tmp_path_factory):
    args = ["train", "--mode", "base", "--resume", "--no-track"]
    epochs = 8
    write_params(tiny_project, {"train": {"epochs": epochs, "patience": epochs}})
    reference = Probe(tiny_project.parent)
    started = time.time()
    assert_ok(reference.run(*args, timeout=TIMEOUT))
    epoch_seconds = (time.time() - started) / (epochs + 1)  # + start-up and the epoch-0 validation
    expected_history = _history(tiny_project)
    expected_best = torch.load(tiny_project / "outputs/train/synthetic/base/best.pt", weights_only=True)

    # A fresh copy of the same project, killed KILLS times, then run to the end.
    fresh = tmp_path_factory.mktemp("killed")
    (fresh / "project").mkdir()
    shutil.copy(tiny_project / "params.yaml", fresh / "project")
    for part in ("outputs/synthetic", "outputs/backgrounds", "outputs/index", "outputs/masks"):
        shutil.copytree(tiny_project / part, fresh / "project" / part)
    probe = Probe(fresh)
    before = probe.snapshot()
    last = fresh / "project/outputs/train/synthetic/base/last.pt"
    rng = random.Random(1)
    # Each run is killed at a seeded random moment of the epoch after its first checkpoint:
    # mid-batch, mid-validation or mid-checkpoint-write.
    landed = sum(run_killed_when(probe.project, args,
                                 lambda started: last.is_file() and last.stat().st_mtime >= started,
                                 rng.uniform(0, 1.2 * epoch_seconds)) for _ in range(KILLS))
    assert_ok(probe.run(*args, timeout=TIMEOUT))
    assert landed >= 3
    assert_only_changed(before, probe.snapshot(), "project/outputs/train/synthetic", "project/reports/train")
    assert _history(fresh / "project") == expected_history
    best = torch.load(fresh / "project/outputs/train/synthetic/base/best.pt", weights_only=True)
    assert best["epoch"] == expected_best["epoch"] and best["metric"] == expected_best["metric"]
    assert all(torch.equal(best["model"][k], expected_best["model"][k]) for k in expected_best["model"])
    assert not list((fresh / "project/outputs/train").rglob("*.partial"))
