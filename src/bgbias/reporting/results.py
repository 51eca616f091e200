"""`reports/results.md` (a table shaped like the paper's Table 1, from this run's own
numbers) and the clean-vs-replaced bar chart."""

from __future__ import annotations

from pathlib import Path

from bgbias.core.environment import environment_markdown
from bgbias.core.files import atomic_write, write_text

# The paper's MAP@R (%), clean -> replaced, as ranges over its five losses
# (DESIGN.md section 2); it reports no per-loss table in its repository.
PAPER_TABLE1 = {
    "cars196": {"base": "15-19 -> 13-16", "bgaugment": "no drop"},
    "cub200": {"base": "18-21 -> 11-13", "bgaugment": "replaced 15-18"},
    "sop": {"base": "37-42 -> 4-8", "bgaugment": "22-33 -> 17-25"},
}


# The paper's attention scores, base / BGAugment, as ranges over its five losses.
PAPER_TABLE2 = {
    "cars196": {"base": "0.49-0.52", "bgaugment": "0.50-0.56"},
    "cub200": {"base": "0.24-0.26", "bgaugment": "0.30-0.33"},
    "sop": {"base": "0.07-0.13", "bgaugment": "0.26-0.31"},
}


def relative_drop(clean: float, replaced: float) -> float:
    """Share of clean MAP@R lost with replaced backgrounds (0 = no drop)."""
    return 1.0 - replaced / clean if clean > 0 else 0.0


UNTRAINED_LABELS = {
    "initialised": "untrained, as initialised (backbone + fresh embedding)",
    "pooled_features": "untrained, backbone's pooled features",
}


def table1(metrics: dict, dataset_format: str) -> str:
    """One row per trained mode, then the untrained references on the same images and
    draws; the last column is each row's clean MAP@R minus the best untrained one."""
    paper = PAPER_TABLE1.get(dataset_format, {})
    untrained = metrics.get("untrained", {})
    reference = max((r["clean"]["map_at_r"] for r in untrained.values()), default=None)
    lines = [
        "| dataset | loss | mode | MAP@R clean | MAP@R replaced (mean ± std) | relative drop | P@1 clean / replaced "
        "| clean MAP@R vs best untrained | paper MAP@R % (all losses) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(mode, result, paper.get(mode, "-")) for mode, result in metrics["modes"].items()]
    rows += [(UNTRAINED_LABELS.get(name, f"untrained, {name}"), result, "-") for name, result in untrained.items()]
    for label, result, paper_value in rows:
        clean = result["clean"]["map_at_r"]
        replaced = result["replaced"]["map_at_r"]
        versus = "-" if reference is None else f"{100 * (clean - reference):+.1f}"
        lines.append(
            f"| {metrics['dataset']} | {metrics['loss']} | {label} | {100 * clean:.1f} | "
            f"{100 * replaced['mean']:.1f} ± {100 * replaced['std']:.1f} | "
            f"{100 * relative_drop(clean, replaced['mean']):.1f} % | "
            f"{100 * result['clean']['precision_at_1']:.1f} / {100 * result['replaced']['precision_at_1']['mean']:.1f} | "
            f"{versus} | {paper_value} |"
        )
    return "\n".join(lines)


def seeds_table(runs: list[dict]) -> str:
    """Table 1 over training seeds: one metrics.json per seed (same data, draws and recipe),
    each row's MAP@R as mean ± std over the seeds (population std; each seed's replaced
    value is already its mean over the background draws)."""
    import numpy as np

    def rows(metrics: dict) -> dict[str, dict]:
        named = dict(metrics["modes"])
        named.update({UNTRAINED_LABELS.get(n, n): r for n, r in metrics.get("untrained", {}).items()})
        return named

    per_run = [rows(m) for m in runs]
    lines = [
        "| mode | MAP@R clean | MAP@R replaced | relative drop | P@1 clean | P@1 replaced | seeds "
        "| replaced: std over draws (mean over seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(values: list[float], scale: float = 100.0, unit: str = "") -> str:
        return f"{scale * np.mean(values):.1f} ± {scale * np.std(values):.1f}{unit}"

    for label in per_run[0]:
        results = [r[label] for r in per_run if label in r]
        clean = [r["clean"]["map_at_r"] for r in results]
        replaced = [r["replaced"]["map_at_r"]["mean"] for r in results]
        drops = [relative_drop(c, x) for c, x in zip(clean, replaced)]
        lines.append(f"| {label} | {cell(clean)} | {cell(replaced)} | {cell(drops, unit=' %')} | "
                     f"{cell([r['clean']['precision_at_1'] for r in results])} | "
                     f"{cell([r['replaced']['precision_at_1']['mean'] for r in results])} | {len(results)} | "
                     f"{100 * np.mean([r['replaced']['map_at_r']['std'] for r in results]):.1f} |")
    return "\n".join(lines)


SWAP_COLUMNS = ("clean", "replaced", "only_fg", "only_bg", "mixed_same", "mixed_rand", "bg_gap")


def _cell(value: float | dict) -> str:
    """MAP@R in %: a number, or mean ± std over draws."""
    if isinstance(value, dict):
        return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}"
    return f"{100 * value:.1f}"


def conditions_table(metrics: dict) -> str:
    """Table 3: MAP@R per background-swap condition, BG-gap and worst-of-K, per mode and
    untrained reference (columns the evaluation did not run are left out)."""
    results = {**metrics["modes"], **{UNTRAINED_LABELS.get(n, f"untrained, {n}"): r
                                      for n, r in metrics.get("untrained", {}).items()}}
    first = next(iter(results.values()))
    columns = [c for c in SWAP_COLUMNS if c in first]
    worst = "worst_of_k" in first
    header = [c if c != "bg_gap" else "BG-gap (same - rand)" for c in columns]
    if worst:
        header.append(f"worst of {first['worst_of_k']['k']} backgrounds")
    lines = ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for label, result in results.items():
        cells = [_cell(result[c]["map_at_r"]) for c in columns]
        if worst:
            cells.append(_cell(result["worst_of_k"]["map_at_r"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CONDITIONS_TEXT = (
    "MAP@R in % on the test images under each condition (after Xiao et al., ICLR 2021): *only_fg* the object "
    "on black; *only_bg* the object removed and its region inpainted (what the background alone retrieves: the "
    "bias the data offers); *mixed_same* / *mixed_rand* the object on the object-removed background of another "
    "test image of the same / another class (mean ± std over the seeded draws); BG-gap = mixed_same - mixed_rand "
    "(how much a matching background helps); worst of K: per query the lowest AP@R over K test-pool backgrounds "
    "behind the query, against the clean test images.")


def seeds_attention_table(attention: list[dict]) -> str:
    """Table 2 over training seeds: each seed's mean attention score, then mean ± std over seeds."""
    import numpy as np

    lines = ["| mode | attention clean | on replaced backgrounds | seeds |", "|---|---|---|---|"]
    for mode in attention[0]["modes"]:
        scores = {c: [a["modes"][mode][c]["mean"] for a in attention] for c in ("clean", "replaced")}
        lines.append(f"| {mode} | {np.mean(scores['clean']):.3f} ± {np.std(scores['clean']):.3f} | "
                     f"{np.mean(scores['replaced']):.3f} ± {np.std(scores['replaced']):.3f} | {len(attention)} |")
    return "\n".join(lines)


def per_seed_table(runs: dict[int, dict]) -> str:
    """Each seed's own figures, so a mean is never read without its parts."""
    lines = ["| seed | mode | MAP@R clean | MAP@R replaced | best epoch (of run) | beats epoch 0 |",
             "|---|---|---|---|---|---|"]
    for seed, run in runs.items():
        for mode, result in run["metrics"]["modes"].items():
            train = run["train"].get(mode, {})
            epochs = f"{train['best_epoch']} ({train['epochs_run']})" if "best_epoch" in train else "-"
            lines.append(f"| {seed} | {mode} | {100 * result['clean']['map_at_r']:.1f} | "
                         f"{100 * result['replaced']['map_at_r']['mean']:.1f} | {epochs} | "
                         f"{train.get('beats_epoch0', '-')} |")
    return "\n".join(lines)


def seeds_markdown(runs: dict[int, dict], dataset_format: str, environment: dict | None = None) -> str:
    first = runs[min(runs)]["metrics"]
    attention = [r["attention"] for r in runs.values() if r["attention"]]
    parts = [
        "# Results over training seeds",
        "",
        f"`{first['dataset']}` / `{first['loss']}`, training seeds {', '.join(map(str, runs))} (the data and the "
        f"background pools are the same for every seed: `data_seed`). Test split: {first['test_images']} images of "
        f"{first['test_classes']} classes; each seed's *replaced* MAP@R is its mean over {first['replaced_draws']} "
        "seeded background draws. MAP@R in %, mean ± population std over the seeds.",
        "",
        "## Table 1: retrieval with clean and replaced backgrounds",
        "",
        seeds_table([r["metrics"] for r in runs.values()]),
    ]
    paper = PAPER_TABLE1.get(dataset_format)
    if paper:
        parts += ["", "The paper's MAP@R % (all losses): " + "; ".join(f"{m} {v}" for m, v in paper.items()) + "."]
    parts += [
        "",
        "![MAP@R clean vs replaced, mean over seeds](figures/map_at_r.png)",
        "",
        "## Per seed",
        "",
        per_seed_table(runs),
    ]
    if attention:
        parts += ["", "## Table 2: attention score", "", seeds_attention_table(attention)]
    if environment:
        parts += ["", environment_markdown(environment)]
    return "\n".join(parts) + "\n"


def mean_over_seeds(runs: list[dict]) -> dict:
    """metrics.json-shaped means over seeds for the bar chart: the replaced bars' error bars
    are the std over seeds (not over draws)."""
    import numpy as np

    def rows(kind: str) -> dict:
        out = {}
        for name in runs[0].get(kind, {}):
            clean = [r[kind][name]["clean"]["map_at_r"] for r in runs]
            replaced = [r[kind][name]["replaced"]["map_at_r"]["mean"] for r in runs]
            out[name] = {"clean": {"map_at_r": float(np.mean(clean))},
                         "replaced": {"map_at_r": {"mean": float(np.mean(replaced)), "std": float(np.std(replaced))}}}
        return out

    return {**runs[0], "modes": rows("modes"), "untrained": rows("untrained")}


def write_seeds_report(runs: dict[int, dict], dataset_format: str, out_dir: Path,
                       environment: dict | None = None) -> tuple[Path, Path]:
    figure = out_dir / "figures" / "map_at_r.png"
    averaged = mean_over_seeds([r["metrics"] for r in runs.values()])
    bar_chart(averaged, figure, title=f"{averaged['dataset']} / {averaged['loss']}, mean of {len(runs)} seeds")
    results = out_dir / "results.md"
    write_text(results, seeds_markdown(runs, dataset_format, environment))
    return results, figure


def training_check(train_reports: dict[str, dict]) -> str:
    """Did training beat its own start? Each mode's selected epoch against epoch 0 (the
    untrained model) on the mode's selection metric; a model that did not is flagged."""
    lines = [
        "| mode | selection metric | epoch 0 (untrained) | best (epoch) | verdict |",
        "|---|---|---|---|---|",
    ]
    for mode, r in train_reports.items():
        selection = r["selection_metric"]
        start = r.get(f"epoch0_{selection}")
        if start is None:
            verdict, start_text = "not measured (run from before epoch-0 validation)", "-"
        else:
            start_text = f"{100 * start:.1f}"
            verdict = "beats its start" if r["beats_epoch0"] else "**FLAG: training did not beat its untrained start**"
        lines.append(f"| {mode} | {selection} | {start_text} | {100 * r[selection]:.1f} ({r['best_epoch']} of "
                     f"{r['epochs_run']}) | {verdict} |")
    return "\n".join(lines)


def table2(attention: dict, dataset_format: str) -> str:
    paper = PAPER_TABLE2.get(dataset_format, {})
    lines = [
        "| dataset | loss | mode | attention score clean (mean ± std, n) | on replaced backgrounds | paper (all losses) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, result in attention["modes"].items():
        c, r = result["clean"], result["replaced"]
        lines.append(f"| {attention['dataset']} | {attention['loss']} | {mode} | {c['mean']:.3f} ± {c['std']:.3f} "
                     f"(n={c['n']}) | {r['mean']:.3f} ± {r['std']:.3f} | {paper.get(mode, '-')} |")
    return "\n".join(lines)


def results_markdown(metrics: dict, dataset_format: str, figure: str | None = None,
                     attention: dict | None = None, train_reports: dict[str, dict] | None = None,
                     environment: dict | None = None) -> str:
    parts = [
        "# Results",
        "",
        f"Test split of `{metrics['dataset']}`: {metrics['test_images']} images of {metrics['test_classes']} "
        f"classes. MAP@R in %; *replaced*: every test image's background replaced with a crop of a test-pool "
        f"photo (never seen in training), {metrics['replaced_draws']} seeded draws shared by both modes.",
        "",
        "## Table 1: retrieval with clean and replaced backgrounds",
        "",
        table1(metrics, dataset_format),
    ]
    if "untrained" in metrics:
        parts += ["", "The untrained rows are the trained models' starting point on the same images and background "
                      "draws; a trained model is worth reporting only above them."]
    if set(next(iter(metrics["modes"].values()))) - {"clean", "replaced"}:  # the swap conditions ran
        parts += ["", "## Table 3: background-swap conditions", "", CONDITIONS_TEXT, "", conditions_table(metrics),
                  "", "![one example row per condition](figures/conditions.png)"]
    if train_reports:
        parts += ["", "## Validation: did training beat its start?", "", training_check(train_reports)]
    if figure:
        parts += ["", f"![MAP@R clean vs replaced]({figure})"]
    if attention:
        parts += [
            "",
            "## Table 2: attention score",
            "",
            "SmoothGrad saliency (25 noisy copies) of the distance to a black image's embedding; score = "
            "(attention share inside the rembg mask - mask share of the image) / (1 - mask share): 0 = spread "
            "like the pixels, 1 = all on the object.",
            "",
            table2(attention, dataset_format),
            "",
            "![saliency of base and bgaugment](figures/attribution.png)",
        ]
    if environment:
        parts += ["", environment_markdown(environment)]
    return "\n".join(parts) + "\n"


BAR_LABELS = {"initialised": "(as initialised)", "pooled_features": "(pooled features)"}


def bar_chart(metrics: dict, path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    results = {**metrics["modes"], **{f"untrained\n{BAR_LABELS.get(n, n)}": r
                                      for n, r in metrics.get("untrained", {}).items()}}
    modes = list(results)
    clean = [100 * results[m]["clean"]["map_at_r"] for m in modes]
    replaced = [100 * results[m]["replaced"]["map_at_r"]["mean"] for m in modes]
    errors = [100 * results[m]["replaced"]["map_at_r"]["std"] for m in modes]
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(modes), 3.5), dpi=120)
    x = range(len(modes))
    ax.bar([i - 0.2 for i in x], clean, width=0.4, label="clean")
    ax.bar([i + 0.2 for i in x], replaced, width=0.4, yerr=errors, capsize=4, label="replaced backgrounds")
    for i, (c, r, e) in enumerate(zip(clean, replaced, errors)):
        ax.text(i - 0.2, c + 1, f"{c:.1f}", ha="center", fontsize=8)
        ax.text(i + 0.2, r + e + 1, f"{r:.1f}", ha="center", fontsize=8)
    ax.set_xticks(list(x), modes)
    ax.set_ylabel("test MAP@R (%)")
    top = max(clean + [r + e for r, e in zip(replaced, errors)])
    ax.set_ylim(0, min(105, 1.25 * top + 5))  # real photos score far below 100
    ax.set_title(title or f"{metrics['dataset']} / {metrics['loss']}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_report(metrics: dict, dataset_format: str, reports_dir: Path,
                 attention: dict | None = None, train_reports: dict[str, dict] | None = None,
                 environment: dict | None = None) -> tuple[Path, Path]:
    figure = reports_dir / "figures" / "map_at_r.png"
    bar_chart(metrics, figure)
    results = reports_dir / "results.md"
    write_text(results, results_markdown(metrics, dataset_format, "figures/map_at_r.png", attention, train_reports,
                                         environment))
    return results, figure
