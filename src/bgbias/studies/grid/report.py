"""`reports/paper/results.md`: the paper's Tables 1 and 2 from the grid's MLflow runs (the
latest done run of each cell with its current fingerprint; stale runs are ignored), each
beside the paper's values, the same tables as CSV, and a grouped bar chart per dataset.

The tables are pandas pivots of one long frame (a row per done cell), so a cell finished
on any machine that logs to the same tracking server counts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bgbias.core.files import atomic_write, write_text
from bgbias.studies.grid.cells import Cell, Grid, grid_runs, statuses
from bgbias.reporting.results import PAPER_TABLE1, PAPER_TABLE2
from bgbias.tracking.mlflow import Tracker

# metric logged by evaluate/attribute/the grid -> column of the long frame
METRICS = {
    "test_clean_map_at_r": "clean",
    "test_replaced_map_at_r": "replaced",
    "test_replaced_map_at_r_std": "replaced_std",
    "test_clean_precision_at_1": "p1_clean",
    "test_replaced_precision_at_1": "p1_replaced",
    "untrained_initialised_test_clean_map_at_r": "untrained_initialised",
    "untrained_pooled_features_test_clean_map_at_r": "untrained_pooled",
    "test_attention_clean": "attention_clean",
    "test_attention_clean_std": "attention_clean_std",
    "test_attention_replaced": "attention_replaced",
    "test_attention_replaced_std": "attention_replaced_std",
}
MODE_NAMES = {"base": "base", "bgaugment": "BGAugment"}


def cell_results(cells: list[Cell], status_rows: list[dict], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per done cell: dataset, loss, mode, run_id, backbone and the METRICS columns."""
    by_id = runs.set_index("run_id") if not runs.empty else runs
    rows = []
    for cell, status in zip(cells, status_rows):
        if status["status"] != "done":
            continue
        run = by_id.loc[status["run_id"]]
        row = {"dataset": cell.dataset, "loss": cell.loss, "mode": cell.mode, "run_id": status["run_id"],
               "backbone": run.get("params.model.backbone", "-")}
        row.update({name: run.get(f"metrics.{metric}") for metric, name in METRICS.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["dataset", "loss", "mode", "run_id", "backbone", *METRICS.values()])
    frame[list(METRICS.values())] = frame[list(METRICS.values())].astype(float)
    frame["drop"] = 1.0 - frame["replaced"] / frame["clean"]
    frame["vs_untrained"] = frame["clean"] - frame[["untrained_initialised", "untrained_pooled"]].max(axis=1)
    return frame


TABLE1_VALUES = ["clean", "replaced", "replaced_std", "drop", "p1_clean", "p1_replaced", "vs_untrained"]
TABLE2_VALUES = ["attention_clean", "attention_clean_std", "attention_replaced", "attention_replaced_std"]


def pivot(results: pd.DataFrame, values: list[str], modes: list[str]) -> pd.DataFrame:
    """Rows (dataset, loss), columns (value, mode) for every mode, done or not: one pivot per table."""
    table = results.pivot_table(index=["dataset", "loss"], columns="mode", values=values, aggfunc="first",
                                dropna=False, sort=False)
    return table.reindex(columns=pd.MultiIndex.from_product([values, modes]))


def _pct(value: float) -> str:
    return "-" if pd.isna(value) else f"{100 * value:.1f}"


def _get(table: pd.DataFrame, key: tuple, value: str, mode: str) -> float:
    return table.loc[key, (value, mode)] if (value, mode) in table.columns else float("nan")


def table1_markdown(table: pd.DataFrame, modes: list[str], formats: dict[str, str]) -> str:
    lines = ["| dataset | loss | mode | MAP@R clean | MAP@R replaced (mean ± std) | relative drop "
             "| P@1 clean / replaced | clean MAP@R vs best untrained | paper MAP@R % (range over its 5 losses) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in table.index:
        dataset, loss = key
        for mode in modes:
            clean = _get(table, key, "clean", mode)
            if pd.isna(clean):
                lines.append(f"| {dataset} | {loss} | {MODE_NAMES[mode]} | not done | | | | | "
                             f"{PAPER_TABLE1.get(formats[dataset], {}).get(mode, '-')} |")
                continue
            lines.append(
                f"| {dataset} | {loss} | {MODE_NAMES[mode]} | {_pct(clean)} | "
                f"{_pct(_get(table, key, 'replaced', mode))} ± {_pct(_get(table, key, 'replaced_std', mode))} | "
                f"{_pct(_get(table, key, 'drop', mode))} % | {_pct(_get(table, key, 'p1_clean', mode))} / "
                f"{_pct(_get(table, key, 'p1_replaced', mode))} | "
                f"{100 * _get(table, key, 'vs_untrained', mode):+.1f} | "
                f"{PAPER_TABLE1.get(formats[dataset], {}).get(mode, '-')} |")
    return "\n".join(lines)


def table2_markdown(table: pd.DataFrame, modes: list[str], formats: dict[str, str]) -> str:
    head = " | ".join(f"{MODE_NAMES[m]} clean | {MODE_NAMES[m]} replaced" for m in modes)
    lines = [f"| dataset | loss | {head} | paper, clean: base / BGAugment (range over its 5 losses) |",
             "|---|---|" + "---|---|" * len(modes) + "---|"]
    for key in table.index:
        cells = []
        for mode in modes:
            for cond in ("clean", "replaced"):
                mean = _get(table, key, f"attention_{cond}", mode)
                std = _get(table, key, f"attention_{cond}_std", mode)
                cells.append("not done" if pd.isna(mean) else f"{mean:.3f} ± {std:.3f}")
        paper = PAPER_TABLE2.get(formats[key[0]])
        lines.append(f"| {key[0]} | {key[1]} | {' | '.join(cells)} | "
                     f"{paper['base'] + ' / ' + paper['bgaugment'] if paper else '-'} |")
    return "\n".join(lines)


def bar_chart(table: pd.DataFrame, dataset: str, modes: list[str], path: Path) -> None:
    """Grouped bars per loss: MAP@R clean and replaced for each mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    part = table.loc[dataset]
    losses = list(part.index)
    series = [(mode, cond) for mode in modes for cond in ("clean", "replaced")]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 1.3 * len(losses)), 3.2), dpi=100)
    for i, (mode, cond) in enumerate(series):
        values = [100 * part.loc[loss, (cond, mode)] if (cond, mode) in part.columns else np.nan for loss in losses]
        errors = [100 * part.loc[loss, ("replaced_std", mode)] if cond == "replaced" and
                  ("replaced_std", mode) in part.columns else 0.0 for loss in losses]
        ax.bar(np.arange(len(losses)) + (i - (len(series) - 1) / 2) * width, np.nan_to_num(values), width,
               yerr=np.nan_to_num(errors), label=f"{MODE_NAMES[mode]} {cond}",
               hatch="//" if cond == "replaced" else None)
    ax.set_xticks(np.arange(len(losses)), losses, fontsize=8)
    ax.set_ylabel("test MAP@R (%)")
    ax.set_title(f"{dataset}: clean vs replaced test backgrounds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    flat = table.copy()
    flat.columns = [f"{mode}_{value}" for value, mode in flat.columns]
    return flat.reset_index()


def progress_markdown(status_rows: list[dict]) -> str:
    counts = pd.Series([r["status"] for r in status_rows]).value_counts()
    lines = [", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(status_rows)} cells)"]
    lines += [f"- {r['cell']}: {r['status']}" for r in status_rows if r["status"] != "done"]
    return "\n".join(lines)


def write_grid_report(grid: Grid, cells: list[Cell], tracker: Tracker) -> Path:
    """results.md, table1.csv, table2.csv and figures/<dataset>.png under reports/paper/."""
    runs = grid_runs(tracker)
    status_rows = statuses(grid, cells, runs)
    results = cell_results(cells, status_rows, runs)
    modes = list(grid.params.paper.modes)
    formats = {c.dataset: grid.params.datasets[c.dataset].format for c in cells}
    index = pd.MultiIndex.from_tuples(list(dict.fromkeys((c.dataset, c.loss) for c in cells)),
                                      names=["dataset", "loss"])
    t1, t2 = (pivot(results, v, modes).reindex(index) for v in (TABLE1_VALUES, TABLE2_VALUES))
    out = grid.layout.reports
    for name, table in (("table1", t1), ("table2", t2)):
        atomic_write(out / f"{name}.csv", lambda tmp, t=table: _flat(t).to_csv(tmp, index=False))
    parts = ["# The paper's grid: results", "", f"Cells: {progress_markdown(status_rows)}", "",
             f"Backbone: {_backbones(grid, results)}. Cells may have run on several machines: compare "
             "figures made on one kind of machine only (README, *Reproducibility is per machine*).", "",
             "The paper's values are ranges over its five losses (it publishes no per-loss table); untrained: "
             "each cell's starting point (ImageNet backbone with its fresh embedding layer, or its pooled "
             "features) on the same test images.", "",
             "## Table 1: MAP@R and P@1 (%), clean and with replaced test backgrounds", "",
             table1_markdown(t1, modes, formats), "",
             "## Table 2: attention score (SmoothGrad share on the object, 0 = like the pixels, 1 = all on it)", "",
             table2_markdown(t2, modes, formats), ""]
    for dataset in dict.fromkeys(c.dataset for c in cells):
        bar_chart(t1, dataset, modes, out / "figures" / f"{dataset}.png")
        parts += [f"![{dataset}](figures/{dataset}.png)", ""]
    write_text(out / "results.md", "\n".join(parts))
    return out / "results.md"


def _backbones(grid: Grid, results: pd.DataFrame) -> str:
    chosen = grid.dataset_params(grid.params.paper.datasets[0]).model.backbone
    why = ("model.weights is given" if chosen == "bninception" and grid.params.paper.backbone == "auto"
           else "model.weights is not given; the paper's bninception needs its weights file"
           if grid.params.paper.backbone == "auto" else "paper.backbone")
    used = sorted(set(results["backbone"].dropna())) if not results.empty else []
    return f"{chosen} ({why})" + (f"; the done cells' runs used {', '.join(used)}" if used else "")
