"""One training on two "nodes" (the README's torchrun multi-node command on loopback, CPU,
gloo): each node has its own copy of the project; rank 0's node writes and logs the one
run to the tracking server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from bgbias.tracking.local_services import free_port
from tests.conftest import write_params


def test_torchrun_on_two_nodes_logs_one_run_to_the_server(mlflow_server, tiny_project, tmp_path):
    port = free_port()
    nodes = []
    for rank in (0, 1):
        root = tmp_path / f"node{rank}"
        shutil.copytree(tiny_project, root)
        write_params(root, {"train": {"epochs": 2}, "tracking": {"uri": mlflow_server.uri}})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "bgbias", "--params", str(root / "params.yaml"), "train", "--mode", "base"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        nodes.append((root, subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)))
    for root, proc in nodes:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]

    report = json.loads((nodes[0][0] / "reports" / "train" / "base.json").read_text())
    assert report["processes"] == 2 and report["epochs_run"] == 2
    assert not (nodes[1][0] / "reports" / "train").exists()  # only rank 0 (node 0) writes

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("synthetic")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.params.get("data.world_size") == "2"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["best_val_map_at_r"] == report["val_map_at_r"]
