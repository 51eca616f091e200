"""The bias curves from their points' metrics.json: CSV tables (DVC plots), a JSON summary
and the PNGs in reports/bias_curve/.

- `bg_correlation.csv`: per share of home backgrounds in the synthetic data and mode, the
  relative MAP@R drop with replaced backgrounds (1 - replaced / clean), the BG-gap
  (mixed_same - mixed_rand MAP@R) and only_bg MAP@R;
- `bgaugment_p.csv`: the same for BGAugment trained with each probability on the default
  data (the clean vs replaced trade-off).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bgbias.core.config import MODES, Params
from bgbias.core.errors import BgbiasError
from bgbias.core.files import atomic_write, write_json, write_text
from bgbias.core.layout import Layout
from bgbias.reporting.results import relative_drop

COLUMNS = ("clean", "replaced", "relative_drop", "bg_gap", "only_bg")


def point_values(result: dict) -> dict[str, float]:
    """MAP@R figures of one mode at one point (NaN where the condition did not run)."""
    clean, replaced = result["clean"]["map_at_r"], result["replaced"]["map_at_r"]["mean"]
    return {"clean": clean, "replaced": replaced, "relative_drop": relative_drop(clean, replaced),
            "bg_gap": result["bg_gap"]["map_at_r"]["mean"] if "bg_gap" in result else math.nan,
            "only_bg": result["only_bg"]["map_at_r"] if "only_bg" in result else math.nan}


def read_point(layout: Layout, curve: str, value: float) -> dict:
    """The metrics of the point whose folder names `value` (written as params.yaml writes it:
    0, 0.0 and 0.00 are one point)."""
    folder = layout.curve_points(curve)
    names = [p.name for p in folder.iterdir() if _number(p.name) == value] if folder.is_dir() else []
    path = folder / (names[0] if names else str(value)) / "reports" / "metrics.json"
    if not path.is_file():
        raise BgbiasError(f"{path} not found (run `dvc repro pipelines/bias_curve/dvc.yaml`)")
    return json.loads(path.read_text())


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def curve_rows(params: Params, layout: Layout) -> dict[str, list[dict]]:
    """{"bg_correlation": [{bg_correlation, <mode>_<column>...}], "bgaugment_p": [{bgaugment_p, <column>...}]}."""
    rows: dict[str, list[dict]] = {"bg_correlation": [], "bgaugment_p": []}
    for value in params.bias_curve.bg_correlation:
        modes = read_point(layout, "bg_correlation", value)["modes"]
        row = {"bg_correlation": value}
        for mode in MODES:
            row.update({f"{mode}_{k}": v for k, v in point_values(modes[mode]).items()})
        rows["bg_correlation"].append(row)
    for value in params.bias_curve.bgaugment_p:
        result = read_point(layout, "bgaugment_p", value)["modes"]["bgaugment"]
        rows["bgaugment_p"].append({"bgaugment_p": value, **point_values(result)})
    return rows


def _csv(rows: list[dict]) -> str:
    keys = list(rows[0]) if rows else []
    lines = [",".join(keys)] + [",".join("" if isinstance(r[k], float) and math.isnan(r[k]) else f"{r[k]:.6g}"
                                         for k in keys) for r in rows]
    return "\n".join(lines) + "\n"


def write_curves(params: Params, layout: Layout) -> dict[str, list[dict]]:
    rows = curve_rows(params, layout)
    out = layout.bias_curve_reports
    for curve, curve_rows_ in rows.items():
        write_text(out / f"{curve}.csv", _csv(curve_rows_))
    clean = {curve: [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rs]
             for curve, rs in rows.items()}
    write_json(out / "curves.json", clean)
    correlation_figure(rows["bg_correlation"], out / "bg_correlation.png")
    bgaugment_figure(rows["bgaugment_p"], out / "bgaugment_p.png")
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def correlation_figure(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    x = [r["bg_correlation"] for r in rows]
    for mode in MODES:
        axes[0].plot(x, [100 * r[f"{mode}_relative_drop"] for r in rows], marker="o", label=mode)
        axes[1].plot(x, [100 * r[f"{mode}_bg_gap"] for r in rows], marker="o", label=mode)
    axes[0].set_ylabel("relative MAP@R drop, replaced (%)")
    axes[1].set_ylabel("BG-gap, mixed_same - mixed_rand (pts)")
    for ax in axes:
        ax.set_xlabel("bg_correlation (share of home backgrounds)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def bgaugment_figure(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    x = [r["bgaugment_p"] for r in rows]
    axes[0].plot(x, [100 * r["clean"] for r in rows], marker="o", label="clean")
    axes[0].plot(x, [100 * r["replaced"] for r in rows], marker="o", label="replaced")
    axes[0].set_ylabel("test MAP@R (%)")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [100 * r["relative_drop"] for r in rows], marker="o", label="relative drop")
    axes[1].plot(x, [100 * r["bg_gap"] for r in rows], marker="o", label="BG-gap")
    axes[1].set_ylabel("%, points")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("train.bgaugment_p")
    _save(fig, path)
    plt.close(fig)
