"""Report tables from metrics worked out by hand."""

from __future__ import annotations

import json

from bgbias.cli import main
from bgbias.reporting.results import seeds_table, table1, write_seeds_report


def _result(clean: float, replaced: float, p1: float = 0.5) -> dict:
    metric = {"mean": replaced, "std": 0.0, "draws": 1}
    return {"clean": {"map_at_r": clean, "precision_at_1": p1, "r_precision": clean},
            "replaced": {"map_at_r": metric, "precision_at_1": {"mean": p1, "std": 0.0, "draws": 1},
                         "r_precision": metric}}


def _metrics(base: float, untrained: float) -> dict:
    return {"dataset": "d", "loss": "triplet", "test_images": 10, "test_classes": 2, "replaced_draws": 1,
            "modes": {"base": _result(base, base / 2)},
            "untrained": {"pooled_features": _result(untrained, untrained / 4)}}


def test_table1_says_how_far_each_row_is_above_the_best_untrained():
    text = table1(_metrics(0.30, 0.25), "csv")
    assert "| d | triplet | base | 30.0 | 15.0 ± 0.0 | 50.0 % | 50.0 / 50.0 | +5.0 | - |" in text
    assert "| untrained, backbone's pooled features | 25.0 | 6.2 ± 0.0 | 75.0 % | 50.0 / 50.0 | +0.0 | - |" in text


def test_seeds_table_is_mean_and_population_std_over_runs(tmp_path, capsys):
    # base clean 0.2 and 0.4: mean 30.0, std 10.0; replaced 0.1 and 0.2: 15.0 ± 5.0; drop 50 % both.
    runs = [_metrics(0.2, 0.1), _metrics(0.4, 0.1)]
    text = seeds_table(runs)
    assert "| base | 30.0 ± 10.0 | 15.0 ± 5.0 | 50.0 ± 0.0 % | 50.0 ± 0.0 | 50.0 ± 0.0 | 2 | 0.0 |" in text
    assert "| untrained, backbone's pooled features | 10.0 ± 0.0 | 2.5 ± 0.0 | 75.0 ± 0.0 % |" in text

    files = []
    for i, run in enumerate(runs):
        files.append(tmp_path / f"s{i}.json")
        files[-1].write_text(json.dumps(run))
    assert main(["seeds-table", *map(str, files)]) == 0
    assert capsys.readouterr().out.strip() == text
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**runs[0], "dataset": "e"}))
    assert main(["seeds-table", str(files[0]), str(other)]) == 2
    assert "different studies" in capsys.readouterr().err


def test_conditions_table_rows_and_cells():
    from bgbias.reporting.results import conditions_table, results_markdown

    metrics = _metrics(0.30, 0.25)
    drawn = {"mean": 0.2, "std": 0.01, "draws": 3}
    metrics["modes"]["base"].update({
        "only_fg": {"map_at_r": 0.4}, "only_bg": {"map_at_r": 0.125}, "mixed_same": {"map_at_r": drawn},
        "mixed_rand": {"map_at_r": {"mean": 0.05, "std": 0.0, "draws": 3}},
        "bg_gap": {"map_at_r": {"mean": 0.15, "std": 0.01, "draws": 3}},
        "worst_of_k": {"map_at_r": 0.033, "k": 5, "query_replaced_map_at_r": 0.1}})
    metrics["untrained"]["pooled_features"].update({k: metrics["modes"]["base"][k] for k in
                                                    ("only_fg", "only_bg", "mixed_same", "mixed_rand", "bg_gap",
                                                     "worst_of_k")})
    text = conditions_table(metrics)
    assert "| model | clean | replaced | only_fg | only_bg | mixed_same | mixed_rand | BG-gap (same - rand) " \
           "| worst of 5 backgrounds |" in text
    assert "| base | 30.0 | 15.0 ± 0.0 | 40.0 | 12.5 | 20.0 ± 1.0 | 5.0 ± 0.0 | 15.0 ± 1.0 | 3.3 |" in text
    assert "| untrained, backbone's pooled features | 25.0 |" in text
    assert "## Table 3: background-swap conditions" in results_markdown(metrics, "csv")
    assert "Table 3" not in results_markdown(_metrics(0.30, 0.25), "csv")  # an older metrics.json


def test_seeds_report_has_the_means_each_seeds_figures_and_attention_over_seeds(tmp_path):
    # attention clean 0.2 and 0.4: 0.300 ± 0.100; replaced 0.1 both: 0.100 ± 0.000.
    def attention(clean: float) -> dict:
        return {"modes": {"base": {"clean": {"mean": clean}, "replaced": {"mean": 0.1}}}}

    runs = {seed: {"metrics": _metrics(base, 0.1), "attention": attention(clean),
                   "train": {"base": {"best_epoch": seed + 2, "epochs_run": 6, "beats_epoch0": True}}}
            for seed, base, clean in ((0, 0.2, 0.2), (1, 0.4, 0.4))}
    results, figure = write_seeds_report(runs, "cub200", tmp_path, None)
    text = results.read_text()
    assert "| base | 30.0 ± 10.0 | 15.0 ± 5.0 | 50.0 ± 0.0 % |" in text
    assert "| 0 | base | 20.0 | 10.0 | 2 (6) | True |" in text and "| 1 | base | 40.0 | 20.0 | 3 (6) | True |" in text
    assert "| base | 0.300 ± 0.100 | 0.100 ± 0.000 | 2 |" in text
    assert "base 18-21 -> 11-13" in text  # the paper's CUB range beside ours
    assert figure.stat().st_size > 0


def test_seed_option_gives_the_run_its_own_seed_and_folders(tmp_path):
    from bgbias.cli import _params, build_parser

    (tmp_path / "params.yaml").write_text("dataset: synthetic\nloss: triplet\nseed: 0\n"
                                          "datasets: {synthetic: {format: csv, root: images}}\n")
    params, layout = _params(build_parser().parse_args(["--params", str(tmp_path / "params.yaml"), "--seed", "7",
                                                        "evaluate"]))
    assert params.seed == 7
    assert layout.train_dir("synthetic", "base") == tmp_path / "outputs/seeds/seed7/train/synthetic/base"
    assert layout.metrics_report == tmp_path / "reports/seeds/runs/seed7/metrics.json"
    assert layout.index_csv("synthetic") == tmp_path / "outputs/index/synthetic.csv"  # the shared inputs stay
