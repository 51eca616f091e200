"""A 2-point bias curve end to end on the tiny project (plus one bgaugment_p point)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from bgbias.core.config import load_params
from bgbias.studies.bias_curve.points import bgaugment_point, correlation_point
from bgbias.studies.bias_curve.report import write_curves
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout
from tests.conftest import write_params


def _snapshot(root):
    return {p: p.stat().st_mtime_ns for p in (root / "outputs").rglob("*") if p.is_file()}


def test_two_point_curve_writes_only_its_own_folders(tiny_project):
    params = load_params(write_params(tiny_project, {
        "train": {"epochs": 1, "iterations_per_epoch": 1},
        "eval": {"replaced_draws": 1, "worst_of_k": 1, "conditions": ["only_bg", "mixed_same", "mixed_rand"]},
        "bias_curve": {"bg_correlation": [0.0, 1.0], "bgaugment_p": [0.5]}}))
    layout = Layout(tiny_project)
    before = _snapshot(tiny_project)
    reports = {name: correlation_point(params, layout, name) for name in ("0.0", "1")}  # "1": as YAML may write it
    p_report = bgaugment_point(params, layout, "0.5")
    after = _snapshot(tiny_project)
    assert {p: t for p, t in after.items() if p in before} == before  # the project's own outputs untouched
    assert all(layout.curve_points("bg_correlation") in p.parents or layout.curve_points("bgaugment_p") in p.parents
               for p in set(after) - set(before))

    for name, report in reports.items():
        point = layout.curve_point("bg_correlation", name)
        labels = (point / "outputs" / "synthetic" / "images" / "labels.csv").read_text()
        assert labels and (point / "outputs" / "index" / "synthetic.csv").is_file()
        assert json.loads((point / "reports" / "metrics.json").read_text()) == json.loads(json.dumps(report))
        assert set(report["modes"]) == {"base", "bgaugment"} and set(report["untrained"]) == {"initialised",
                                                                                              "pooled_features"}
    assert set(p_report["modes"]) == {"bgaugment"}
    best = torch.load(layout.curve_point("bgaugment_p", "0.5") / "outputs" / "train" / "synthetic" / "bgaugment"
                      / "best.pt", weights_only=True)
    assert json.loads(best["config"])["train"]["bgaugment_p"] == 0.5
    images = [layout.curve_point("bg_correlation", n) / "outputs" / "synthetic" / "images" for n in ("0.0", "1")]
    first = sorted(p.relative_to(images[0]) for p in images[0].rglob("*.png"))[0]
    assert (images[0] / first).read_bytes() != (images[1] / first).read_bytes()  # re-rendered per point

    rows = write_curves(params, layout)
    out = layout.bias_curve_reports
    with open(out / "bg_correlation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["bg_correlation"]) for r in table] == [0.0, 1.0]
    for row, name in zip(table, ("0.0", "1")):
        base = reports[name]["modes"]["base"]
        clean, replaced = base["clean"]["map_at_r"], base["replaced"]["map_at_r"]["mean"]
        assert float(row["base_relative_drop"]) == pytest.approx(1 - replaced / clean, rel=1e-5)
        assert float(row["base_bg_gap"]) == pytest.approx(base["bg_gap"]["map_at_r"]["mean"], rel=1e-5, abs=1e-6)
        assert float(row["base_only_bg"]) == pytest.approx(base["only_bg"]["map_at_r"], rel=1e-5)
    assert rows["bgaugment_p"][0]["bgaugment_p"] == 0.5
    assert rows["bgaugment_p"][0]["clean"] == p_report["modes"]["bgaugment"]["clean"]["map_at_r"]
    for png in ("bg_correlation.png", "bgaugment_p.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    missing = load_params(write_params(tiny_project, {"bias_curve": {"bg_correlation": [0.75], "bgaugment_p": []}}))
    with pytest.raises(BgbiasError, match="0.75.*not found"):
        write_curves(missing, layout)


@pytest.mark.parametrize("value", ["-1", "1.5", "nan", "inf", "half"])
@pytest.mark.parametrize("point", [correlation_point, bgaugment_point])
def test_a_point_value_that_is_no_probability_is_refused(tmp_path, point, value):
    """`--value` bypasses params validation: -1 used to render and train a whole point."""
    params, layout = load_params(write_params(tmp_path)), Layout(tmp_path)
    with pytest.raises(BgbiasError, match=f"bias-curve point value '{value}'"):
        point(params, layout, value)
    assert not (tmp_path / "outputs").exists()


def test_a_point_is_tracked_in_the_bias_curve_experiment(tiny_project):
    from bgbias.tracking.mlflow import MlflowTracker

    params = load_params(write_params(tiny_project, {
        "train": {"epochs": 1, "iterations_per_epoch": 1},
        "eval": {"replaced_draws": 1, "worst_of_k": 0, "conditions": []}}))
    tracker = MlflowTracker.for_project(tiny_project)
    report = bgaugment_point(params, Layout(tiny_project), "0.5", tracker=tracker)
    runs = tracker.search_runs("bias_curve", {"bias_curve": "bgaugment_p"})
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.bias_curve_value"] == "0.5" and run["params.bias_curve.value"] == "0.5"
    assert run["tags.mlflow.runName"] == "bgaugment_p=0.5 bgaugment" and run["params.train.bgaugment_p"] == "0.5"
    clean = report["modes"]["bgaugment"]["clean"]["map_at_r"]
    assert run["metrics.test_clean_map_at_r"] == pytest.approx(clean)
    assert run["metrics.untrained_initialised_test_clean_map_at_r"] == pytest.approx(
        report["untrained"]["initialised"]["clean"]["map_at_r"])
