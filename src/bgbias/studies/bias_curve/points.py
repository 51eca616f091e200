"""One point of a bias curve (pipelines/bias_curve/dvc.yaml), each in its own folder
`outputs/bias_curve/<curve>/<value>/` laid out like a project (outputs/, reports/):

- `bg_correlation`: the synthetic set re-rendered with that share of home backgrounds, its
  index and masks, both modes trained (with the loss's documented values and
  `loss_params.overrides`, not tuned ones), evaluated under every test condition;
- `bgaugment_p`: BGAugment trained on the default data (the project's index, masks and
  pools) with that probability, evaluated likewise.

Each evaluation includes the untrained references on the same images and draws. With a
tracker, each point's trainings are MLflow runs of the experiment `bias_curve` (param
`bias_curve.value`, tags `bias_curve` and `bias_curve_value`), with their validation curves
and, from the evaluation, the test metrics; no model is registered (the registry's aliases
are the default study's). The curve itself reads only the points' metrics.json.
"""

from __future__ import annotations

import logging
import shutil

from bgbias import stages
from bgbias.core.config import MODES, Params
from bgbias.evaluation.retrieval import evaluate_trained
from bgbias.engine.train import RunTarget, fit
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout, PointLayout
from bgbias.tracking.mlflow import Tracker

log = logging.getLogger(__name__)

CURVES = ("bg_correlation", "bgaugment_p")
SYNTHETIC = "synthetic"


def point_value(text: str) -> float:
    """A probability, as params.yaml writes it (the point bypasses params validation)."""
    try:
        value = float(text)
    except ValueError:
        raise BgbiasError(f"bias-curve point value {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # (nan too)
        raise BgbiasError(f"bias-curve point value {text!r}: a probability between 0 and 1")
    return value


def correlation_point(params: Params, layout: Layout, name: str, progress: bool = False,
                      tracker: Tracker | None = None) -> dict:
    """`name`: the value as params.yaml writes it (the point's folder name)."""
    value = point_value(name)
    synthetic = params.datasets.get(SYNTHETIC)
    if synthetic is None:
        raise BgbiasError(f"params.yaml: datasets.{SYNTHETIC} is needed for the bg_correlation curve")
    point = PointLayout(layout.curve_point("bg_correlation", name), project=layout.root)
    _fresh(point)
    dataset = synthetic.model_copy(update={"root": point.synthetic / "images", "gt_masks": point.synthetic / "masks"})
    # The loss's documented values (+ overrides), never tuned ones: those belong to `dataset`.
    params = params.model_copy(update={
        "dataset": SYNTHETIC, "datasets": {SYNTHETIC: dataset},
        "synthetic": params.synthetic.model_copy(update={"bg_correlation": value}),
        "loss_params": params.loss_params.model_copy(update={"source": "paper"}),
        "prepare": params.prepare.model_copy(update={"enabled": False})})  # no decode-free store per point
    stages.synthetic(params, point)
    stages.index(params, point)
    if params.bias_curve.masks == "ground_truth":
        shutil.copytree(point.synthetic / "masks", point.masks(SYNTHETIC))  # the renderer's exact masks
    else:
        stages.masks(params, point)
    for mode in MODES:
        fit(params, point, mode, tracker, progress=progress, target=_tracked_as("bg_correlation", name, value, mode))
    return _evaluate(params, point, MODES, f"bg_correlation {value:g}", progress, tracker)


def bgaugment_point(params: Params, layout: Layout, name: str, progress: bool = False,
                    tracker: Tracker | None = None) -> dict:
    value = point_value(name)
    point = PointLayout(layout.curve_point("bgaugment_p", name), project=layout.root, own_data=False)
    _fresh(point)
    params = params.model_copy(update={"train": params.train.model_copy(update={"bgaugment_p": value})})
    fit(params, point, "bgaugment", tracker, progress=progress,
        target=_tracked_as("bgaugment_p", name, value, "bgaugment"))
    return _evaluate(params, point, ("bgaugment",), f"bgaugment_p {value:g}", progress, tracker)


def _tracked_as(curve: str, name: str, value: float, mode: str) -> RunTarget:
    """A point's training run in MLflow (its files stay in the point's folder)."""
    return RunTarget(experiment="bias_curve", run_name=f"{curve}={name} {mode}",
                     tags={"bias_curve": curve, "bias_curve_value": name},
                     params={"bias_curve": {"curve": curve, "value": value}}, register_model=False)


def _fresh(point: PointLayout) -> None:
    """A point is computed whole: nothing of an older run stays in its folder."""
    if point.root.exists():
        shutil.rmtree(point.root)
    point.root.mkdir(parents=True)


def _evaluate(params: Params, point: PointLayout, modes: tuple[str, ...], name: str, progress: bool,
              tracker: Tracker | None) -> dict:
    report = evaluate_trained(params, point, tracker, progress=progress, modes=modes)
    for mode in modes:
        result = report["modes"][mode]
        log.info("%s %s: MAP@R clean %.4f, replaced %.4f", name, mode, result["clean"]["map_at_r"],
                 result["replaced"]["map_at_r"]["mean"])
    return report
