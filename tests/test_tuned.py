"""tuned.py: the tuned params file as training reads it."""

from __future__ import annotations

import re

import pytest
import yaml

from bgbias.core.config import load_params
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout
from bgbias.losses.tuned import read_tuned
from tests.conftest import write_params


@pytest.mark.parametrize("values, message", [
    ({"alpha": 2.0, "beta": 0.0, "base": 0.5}, "beta must be > 0 (got 0.0)"),  # a ZeroDivisionError in training
    ({"alpha": float("nan"), "beta": 50.0, "base": 0.5}, "alpha must be > 0 (got nan)"),
])
def test_a_tuned_value_the_loss_divides_by_must_be_positive(tmp_path, values, message):
    params = load_params(write_params(tmp_path, {"loss_params": {"source": "tuned"}}))
    path = Layout(tmp_path).tuned_params("synthetic", "multi_similarity")
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"loss_params": {**values, "base": 0.5}}))
    with pytest.raises(BgbiasError, match=re.escape(f"multi_similarity.yaml: {message}")):
        read_tuned(params, Layout(tmp_path))
    path.write_text(yaml.safe_dump({"loss_params": {"alpha": 2.0, "beta": 50.0, "base": 0.0}}))  # base may be 0
    assert read_tuned(params, Layout(tmp_path))["loss_params"] == {"alpha": 2.0, "beta": 50.0, "base": 0.0}
