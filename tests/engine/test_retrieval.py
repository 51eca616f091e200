"""engine/retrieval.py: the test split the evaluate and attribute stages read."""

from __future__ import annotations

import pytest

from bgbias import stages
from bgbias.core.config import parse_params
from bgbias.attribution.stage import attribute_trained
from bgbias.evaluation.retrieval import evaluate_trained
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout
from tests.conftest import ASSETS
from tests.reliability.conftest import snapshot
from tests.reliability.formats import SPLIT, csv_dataset


@pytest.mark.parametrize("stage", [evaluate_trained, attribute_trained])
def test_an_empty_test_split_is_refused_before_any_work(tmp_path, stage):
    """A class_split whose test range names no class of the dataset: the index stage writes an
    empty test split; evaluate and attribute refuse it in one line (they used to end in a
    traceback from torch.stack / matplotlib after writing the draws' files)."""
    dataset = {**csv_dataset(tmp_path / "ds"), "class_split": {**SPLIT, "test": {"first": 5, "last": 9}}}
    params = parse_params({"dataset": "ds", "loss": "triplet", "assets_dir": str(ASSETS), "datasets": {"ds": dataset},
                           "index": {"workers": 1}}, tmp_path)
    layout = Layout(tmp_path)
    stages.index(params, layout)
    before = snapshot(tmp_path)
    with pytest.raises(BgbiasError, match=r"ds\.csv: the test split has no images \(check datasets\.ds\.class_split\)"):
        stage(params, layout)
    assert snapshot(tmp_path) == before
