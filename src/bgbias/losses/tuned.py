"""The tuned params file `params/tuned/<dataset>/<loss>.yaml` that `bgbias tune` writes,
as training reads it with `loss_params.source: tuned`: the loss's hyperparameters and, when
the study searched it (`tune.search_lr`), `lr`, which then replaces `train.lr`."""

from __future__ import annotations

import yaml

from bgbias.core.config import Params
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout
from bgbias.core.loss_params import HYPERPARAMETERS, POSITIVE


def read_tuned(params: Params, layout: Layout) -> dict | None:
    """{"loss_params": {...}, "lr": float | None, "study": str | None}, or None when the
    params do not ask for tuned values; a missing or malformed file is a one-line error."""
    if params.loss_params.source != "tuned":
        return None
    path = layout.tuned_params(params.dataset, params.loss)
    if not path.is_file():
        raise BgbiasError(f"loss_params.source is 'tuned' but {path} does not exist "
                          f"(run `bgbias tune --loss {params.loss}` or `dvc repro pipelines/tune/dvc.yaml`)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BgbiasError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    values = data.get("loss_params") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise BgbiasError(f"{path}: expected a 'loss_params' mapping")
    unknown = sorted(set(values) - set(HYPERPARAMETERS[params.loss]))
    if unknown:
        raise BgbiasError(f"{path}: unknown {params.loss} hyperparameter '{unknown[0]}'")
    try:
        loss_values = {k: float(v) for k, v in values.items()}
        lr = None if data.get("lr") is None else float(data["lr"])
    except (TypeError, ValueError) as exc:
        raise BgbiasError(f"{path}: values must be numbers ({exc})") from None
    if lr is not None and lr <= 0:
        raise BgbiasError(f"{path}: lr must be > 0 (got {lr})")
    not_positive = sorted(k for k, v in loss_values.items() if (params.loss, k) in POSITIVE and not v > 0)
    if not_positive:
        raise BgbiasError(f"{path}: {not_positive[0]} must be > 0 (got {loss_values[not_positive[0]]})")
    return {"loss_params": loss_values, "lr": lr, "study": data.get("study")}


def apply_tuned_lr(params: Params, tuned: dict | None) -> Params:
    """The params with train.lr replaced by the tuned lr, when the tuned file has one."""
    if not tuned or tuned.get("lr") is None:
        return params
    return params.model_copy(update={"train": params.train.model_copy(update={"lr": tuned["lr"]})})
