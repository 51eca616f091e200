"""results.md names the machine, CPU, torch and the key package versions it was made with."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import torch

from bgbias import cli
from bgbias.core.environment import PACKAGES, cpu_model, describe_environment
from tests.conftest import write_params

METRICS = {"dataset": "synthetic", "loss": "triplet", "test_images": 4, "test_classes": 2, "replaced_draws": 1,
           "modes": {mode: {"clean": {"map_at_r": 0.5, "precision_at_1": 1.0, "r_precision": 0.5},
                            "replaced": {m: {"mean": 0.25, "std": 0.0, "draws": 1}
                                         for m in ("map_at_r", "precision_at_1", "r_precision")}}
                     for mode in ("base", "bgaugment")}}


def test_environment_names_machine_cpu_and_versions():
    env = describe_environment()
    assert env["machine"] == platform.node() and env["python"] == platform.python_version()
    assert env["packages"]["torch"] == metadata.version("torch") and torch.__version__.startswith(env["packages"]["torch"])
    assert set(env["packages"]) == set(PACKAGES)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        first = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("model name"))
        assert env["cpu"] == cpu_model() == first.partition(":")[2].strip()


def test_report_stage_writes_the_environment_into_results_md(tmp_path, capsys):
    write_params(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(METRICS))
    assert cli.main(["--params", str(tmp_path / "params.yaml"), "report", "--no-track"]) == 0
    text = (tmp_path / "reports" / "results.md").read_text()
    env = describe_environment()
    section = text[text.index("## Environment"):]
    assert f"`{env['machine']}`" in section and env["cpu"] in section
    assert f"torch {env['packages']['torch']}" in section and f"numpy {env['packages']['numpy']}" in section
    assert "same machine" in section
