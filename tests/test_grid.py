"""The paper grid's cells, their status and the report's pivots, on hand-made runs (no
training): enumeration and selection, done / stale / running / failed / missing from a
runs table, `grid list` marking a cell stale after its params change (real fingerprints,
a real MLflow store), and Tables 1 and 2 from hand-made metrics."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from bgbias import cli
from bgbias.core.errors import BgbiasError
from bgbias.studies.grid.cells import Fingerprint, Grid, cell_status, dataset_inputs, fingerprint, grid_runs, statuses
from bgbias.studies.grid.report import TABLE1_VALUES, cell_results, pivot, table1_markdown
from bgbias.tracking.mlflow import MlflowTracker
from tests.grid_project import grid_params, write_grid_params


def load_grid(tmp_path, params: dict) -> Grid:
    return Grid.load(write_grid_params(tmp_path, params), root=tmp_path)


@pytest.fixture
def grid(tmp_path) -> Grid:
    return load_grid(tmp_path, grid_params(["cub", "sop"], ["triplet", "arcface"], ["base", "bgaugment"]))


def test_cells_are_the_product_in_params_order(grid):
    cells = grid.cells()
    assert [c.id for c in cells[:3]] == ["cub/triplet/base", "cub/triplet/bgaugment", "cub/arcface/base"]
    assert [c.index for c in cells] == list(range(8)) and cells[-1].id == "sop/arcface/bgaugment"
    assert [c.id for c in grid.select(["3", "sop/triplet/base"])] == ["cub/arcface/bgaugment", "sop/triplet/base"]
    shards = [grid.select(shard=(i, 3)) for i in range(3)]
    assert [c.index for c in shards[1]] == [1, 4, 7]
    assert sorted(c.index for s in shards for c in s) == list(range(8))  # disjoint, complete
    with pytest.raises(BgbiasError, match="no cell 'cub/x'"):
        grid.select(["cub/x"])
    with pytest.raises(BgbiasError, match="0 <= i < n"):
        grid.select(shard=(3, 3))
    with pytest.raises(BgbiasError, match="expected <dataset>/<loss>/<mode>"):
        grid.cell("cub/hinge/base")
    with pytest.raises(BgbiasError, match="no dataset 'cars'"):
        grid.cell("cars/triplet/base")


def test_cells_have_folders_of_their_own(grid, tmp_path):
    a, b = (grid.cell_layout(c) for c in grid.select(["cub/triplet/base", "cub/triplet/bgaugment"]))
    assert a.train_dir("cub", "base") == tmp_path / "outputs/paper/cells/cub/triplet/base/train"
    assert b.metrics_report == tmp_path / "reports/paper/cells/cub/triplet/bgaugment/metrics.json"
    assert a.index_csv("cub") == tmp_path / "outputs/paper/index/cub.csv"
    assert a.figures == tmp_path / "reports/paper/cells/cub/triplet/base/figures"
    manifest = grid.layout.for_dataset("sop").input_manifest("dataset")
    assert manifest == tmp_path / "outputs/paper/inputs/sop/dataset.json"
    with pytest.raises(ValueError):
        a.train_dir("cub", "bgaugment")  # a cell has no other mode's files


def test_backbone_auto_is_bninception_only_with_weights(tmp_path, grid):
    cell = grid.select(["0"])[0]
    assert grid.cell_params(cell).model.backbone == "efficientnet_lite0"
    (tmp_path / "w.pth").write_bytes(b"x")
    params = grid_params(["cub"], ["triplet"], ["base"])
    params["model"] = {"weights": "w.pth"}
    assert load_grid(tmp_path, params).cell_params(cell).model.backbone == "bninception"


def runs(*rows: dict) -> pd.DataFrame:
    """Newest first, as grid_runs returns them."""
    return pd.DataFrame([{"run_id": f"r{i}", "status": "FINISHED", **row} for i, row in enumerate(rows)])


def done(cell_fp: str, **more) -> dict:
    return {"tags.grid_fingerprint": cell_fp, "tags.grid_config_fingerprint": "c-" + cell_fp,
            "tags.grid_train_fingerprint": "t-" + cell_fp, "tags.grid_status": "done", **more}


def test_status_of_a_cell_from_its_runs():
    fp = Fingerprint(config="c-f1", training="t-f1", cell="f1")
    assert cell_status(runs(), fp) == ("missing", None)
    assert cell_status(runs(done("f1")), fp) == ("done", "r0")
    assert cell_status(runs(done("f0")), fp) == ("stale", "r0")  # done with other settings
    assert cell_status(runs(done("f0"), done("f1")), fp) == ("done", "r1")  # the current one counts
    training = {"tags.grid_train_fingerprint": "t-f1", "tags.grid_status": "training", "status": "RUNNING"}
    assert cell_status(runs(training, done("f0")), fp) == ("running", "r0")
    assert cell_status(runs({**training, "tags.grid_status": "failed"}, done("f0")), fp) == ("failed", "r0")
    # where the data is not prepared, the config fingerprint decides
    assert cell_status(runs(done("f1")), Fingerprint("c-f1", None, None)) == ("done", "r0")
    assert cell_status(runs(done("f1")), Fingerprint("c-f2", None, None)) == ("stale", "r0")


METRIC_NAMES = {"clean": "test_clean_map_at_r", "replaced": "test_replaced_map_at_r",
                "replaced_std": "test_replaced_map_at_r_std", "p1_clean": "test_clean_precision_at_1",
                "p1_replaced": "test_replaced_precision_at_1",
                "untrained_initialised": "untrained_initialised_test_clean_map_at_r",
                "untrained_pooled": "untrained_pooled_features_test_clean_map_at_r",
                "attention_clean": "test_attention_clean", "attention_clean_std": "test_attention_clean_std",
                "attention_replaced": "test_attention_replaced",
                "attention_replaced_std": "test_attention_replaced_std"}


def metrics(clean, replaced, std, p1, p1r, init, pooled, att) -> dict:
    values = dict(zip(METRIC_NAMES, (clean, replaced, std, p1, p1r, init, pooled, att, 0.01, att / 2, 0.02)))
    return {f"metrics.{METRIC_NAMES[k]}": v for k, v in values.items()}


def test_table1_pivot_from_hand_made_runs(grid):
    cells = grid.select(["0", "1", "2", "3"])  # cub: triplet base/bgaugment, arcface base/bgaugment
    lite0 = {"params.model.backbone": "efficientnet_lite0"}
    frame = runs({**lite0, **metrics(0.50, 0.20, 0.01, 0.8, 0.4, 0.10, 0.15, 0.3)},
                 {**lite0, **metrics(0.40, 0.30, 0.02, 0.7, 0.6, 0.10, 0.15, 0.5)},
                 {**lite0, **metrics(0.25, 0.05, 0.00, 0.6, 0.2, 0.10, 0.30, 0.1)})
    status = [{"status": "done", "run_id": "r0"}, {"status": "done", "run_id": "r1"},
              {"status": "done", "run_id": "r2"}, {"status": "missing", "run_id": None}]
    results = cell_results(cells, status, frame)
    assert len(results) == 3
    table = pivot(results, TABLE1_VALUES, ["base", "bgaugment"])
    assert table.loc[("cub", "triplet"), ("drop", "base")] == pytest.approx(0.6)  # 1 - 0.2 / 0.5
    assert table.loc[("cub", "triplet"), ("drop", "bgaugment")] == pytest.approx(0.25)
    assert table.loc[("cub", "triplet"), ("vs_untrained", "base")] == pytest.approx(0.35)  # 0.50 - max(0.10, 0.15)
    assert table.loc[("cub", "arcface"), ("vs_untrained", "base")] == pytest.approx(-0.05)  # below its start
    assert pd.isna(table.loc[("cub", "arcface"), ("clean", "bgaugment")])
    text = table1_markdown(table, ["base", "bgaugment"], {"cub": "cub200"})
    assert "| cub | triplet | base | 50.0 | 20.0 ± 1.0 | 60.0 % | 80.0 / 40.0 | +35.0 | 18-21 -> 11-13 |" in text
    assert "| cub | triplet | BGAugment | 40.0 | 30.0 ± 2.0 | 25.0 % | 70.0 / 60.0 | +25.0 | replaced 15-18 |" in text
    assert "| cub | arcface | BGAugment | not done |" in text


# ---- grid list / report on a real MLflow store, real fingerprints ------------------------


@pytest.fixture
def prepared_grid(prepared_data, tmp_path):
    """The tiny synthetic project's index, masks and pools, as the grid's prepared data."""
    root = tmp_path / "grid"
    (root / ".dvc").mkdir(parents=True)
    shutil.copytree(prepared_data / "outputs" / "synthetic", root / "outputs" / "synthetic")
    for part in ("index", "masks", "backgrounds"):
        shutil.copytree(prepared_data / "outputs" / part, root / "outputs" / "paper" / part)
    params = grid_params(["synthetic"], ["triplet"], ["base", "bgaugment"])
    params["datasets"] = {"synthetic": {"format": "csv", "root": "outputs/synthetic/images"}}
    return root, params


def _log_done_run(grid: Grid, cell, values: dict) -> None:
    tracker = MlflowTracker.for_project(grid.root)
    tags = {"grid_study": "paper", "grid_cell": cell.id, "grid_status": "done",
            **fingerprint(grid, cell, dataset_inputs(grid, cell.dataset)).tags()}
    tracker.start("paper-grid", cell.id, {"model": {"backbone": "efficientnet_lite0"}}, tags)
    tracker.log_metrics(values)
    tracker.finish()


def _list(root, capsys) -> dict[str, str]:
    assert cli.main(["--params", str(root / "pipelines/paper/params.yaml"), "grid", "list"]) == 0
    return {line.split()[1]: line.split()[2] for line in capsys.readouterr().out.splitlines() if "/" in line}


def test_grid_list_marks_a_cell_stale_after_its_params_change_and_report_reads_mlflow(prepared_grid, capsys,
                                                                                     monkeypatch):
    root, params = prepared_grid
    monkeypatch.chdir(root)
    grid = load_grid(root, params)
    base, bgaugment = grid.cells()
    values = (0.5, 0.2, 0.01, 0.8, 0.4, 0.1, 0.15, 0.3, 0.01, 0.2, 0.02)
    _log_done_run(grid, base, dict(zip(METRIC_NAMES.values(), values)))
    assert _list(root, capsys) == {"synthetic/triplet/base": "done", "synthetic/triplet/bgaugment": "missing"}

    write_grid_params(root, {**params, "eval": {"replaced_draws": 3}})  # evaluation settings: stale
    assert _list(root, capsys)["synthetic/triplet/base"] == "stale"
    runs = grid_runs(MlflowTracker.for_project(root))
    for changed in ({"train": {**params["train"], "lr": 2e-4}}, {"attribution": {**params["attribution"], "images": 3}},
                    {"seed": 2}, {}):  # the last: back to the params of the run, done again
        status = statuses(load_grid(root, {**params, **changed}), [base], runs)[0]["status"]
        assert status == ("stale" if changed else "done"), changed
    write_grid_params(root, params)

    assert cli.main(["--params", str(root / "pipelines/paper/params.yaml"), "grid", "report"]) == 0
    results = (root / "reports/paper/results.md").read_text()
    assert "| synthetic | triplet | base | 50.0 | 20.0 ± 1.0 | 60.0 % | 80.0 / 40.0 | +35.0 | - |" in results
    assert "| synthetic | triplet | BGAugment | not done |" in results
    assert "1 done, 1 missing (of 2 cells)" in results.replace("Cells: ", "")
    assert "efficientnet_lite0 (model.weights is not given" in results
    table1 = pd.read_csv(root / "reports/paper/table1.csv")
    assert table1.loc[0, "base_clean"] == pytest.approx(0.5) and pd.isna(table1.loc[0, "bgaugment_clean"])
    table2 = pd.read_csv(root / "reports/paper/table2.csv")
    assert table2.loc[0, "base_attention_clean"] == pytest.approx(0.3)
    assert (root / "reports/paper/figures/synthetic.png").stat().st_size > 1000
    assert yaml.safe_load((root / "pipelines/paper/params.yaml").read_text()) == params  # the report changed no params


@pytest.mark.parametrize("argv, message", [
    (["run", "--shard", "two/3"], "--shard two/3: expected i/n"),
    (["run", "--cell", "cub/hinge/base"], "no cell 'cub/hinge/base'"),
    (["run", "train"], "grid run train: a step (train, evaluate, attribute) of one cell"),
    (["prepare", "train"], "unknown preparation step 'train'"),
    (["prepare", "index", "--dataset", "cars"], "--dataset 'cars' is not one of the grid's datasets (paper.datasets: "
                                                "cub, sop)"),
])
def test_grid_command_errors_are_one_line(grid, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--params", "pipelines/paper/params.yaml", "grid", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_grid_prepare_refuses_a_dataset_outside_the_grid_before_any_file(grid, tmp_path, monkeypatch, capsys):
    """--dataset names the masks folder and its lock: '../../x' used to end in a KeyError
    traceback after making outputs/.x.lock, outside the grid's outputs/paper/."""
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(["--params", "pipelines/paper/params.yaml", "grid", "prepare", "masks", "--dataset", "../../x"]) == 2
    assert "--dataset '../../x' is not one of the grid's datasets" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before
