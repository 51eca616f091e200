"""DDP training under torchrun on CPU: gloo backend, 2 processes, only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.conftest import write_params


def test_torchrun_two_processes_on_cpu(tiny_project):
    params = write_params(tiny_project, {"train": {"epochs": 2}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "bgbias", "--params", str(params), "train", "--mode", "bgaugment", "--no-track"]
    done = subprocess.run(cmd, cwd=tiny_project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tiny_project / "reports" / "train" / "bgaugment.json").read_text())
    assert report["processes"] == 2 and report["epochs_run"] == 2
    last = torch.load(tiny_project / "outputs" / "train" / "synthetic" / "bgaugment" / "last.pt", weights_only=True)
    assert last["finished"] and len(last["history"]) == 3  # epoch 0 (untrained) + 2
    # Each rank logged its own sampler shard; only rank 0 printed the result.
    assert done.stdout.count('"processes": 2') == 1
