"""Retrieval metrics against hand-worked values; the test evaluation stage end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bgbias.core.config import load_params
from bgbias.data.bgaugment import BackgroundPool, replace_backgrounds
from bgbias.data.datasets import DatasetIndex
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.data.transforms import eval_transform, split_batch
from bgbias.engine.embed import embed, retrieval_metrics, summarize_draws
from bgbias.evaluation.retrieval import background_draws, evaluate_trained, load_test_split
from bgbias.engine.train import fit
from bgbias.core.layout import Layout
from bgbias.models import initial_model
from bgbias.reporting.results import relative_drop, write_report
from tests.conftest import write_params


def test_metrics_match_a_hand_worked_example():
    # Five items on a line; labels 0,0,0,1,1. Neighbour orders (nearest first):
    #   q0 (x=0):   i1 (0) i3 (1) ...  R=2: [hit, miss]  -> P@1 1, R-prec 1/2, MAP@R (1/1)/2 = 0.5
    #   q1 (x=1):   i3 (1) i0 (0) ...  R=2: [miss, hit]  -> P@1 0, R-prec 1/2, MAP@R (1/2)/2 = 0.25
    #   q2 (x=3):   i4 (1) i3 (1) ...  R=2: [miss, miss] -> 0, 0, 0
    #   q3 (x=1.5): i1 (0) ...         R=1: [miss]       -> 0, 0, 0
    #   q4 (x=2.2): i3 (1) ...         R=1: [hit]        -> 1, 1, 1
    x = np.array([0.0, 1.0, 3.0, 1.5, 2.2], dtype=np.float32)
    embeddings = np.stack([x, np.zeros_like(x)], axis=1)
    metrics = retrieval_metrics(embeddings, np.array([0, 0, 0, 1, 1]))
    assert metrics == pytest.approx({"precision_at_1": 2 / 5, "r_precision": 2 / 5, "map_at_r": 1.75 / 5})


def test_summary_over_draws_by_hand():
    per_draw = [{"map_at_r": 0.5, "precision_at_1": 1.0, "r_precision": 0.4},
                {"map_at_r": 0.7, "precision_at_1": 1.0, "r_precision": 0.6}]
    summary = summarize_draws(per_draw)
    assert summary["map_at_r"] == pytest.approx({"mean": 0.6, "std": 0.1, "draws": 2})
    assert summary["precision_at_1"]["std"] == 0.0
    assert relative_drop(0.8, 0.2) == pytest.approx(0.75)


def test_replaced_test_set_keeps_labels_and_changes_only_background_pixels(tiny_project):
    params = load_params(write_params(tiny_project))
    layout = Layout(tiny_project)
    index = DatasetIndex.read(layout.index_csv("synthetic"), params.selected.root)
    test_set = MaskedImageDataset(index.split("test"), index.root, layout.masks("synthetic"),
                                  eval_transform(params.train))
    pool = BackgroundPool.from_folder(layout.backgrounds / "test", params.train.resize)
    draws = background_draws(pool, len(test_set), seed=0, count=3)
    again = background_draws(pool, len(test_set), seed=0, count=3)
    assert all(torch.equal(a.box, b.box) and torch.equal(a.photo, b.photo) for a, b in zip(draws, again))
    assert not torch.equal(draws[0].box, draws[1].box)

    batch, labels, index_in_set = next(iter(DataLoader(test_set, batch_size=len(test_set))))
    images, masks = split_batch(batch)
    replaced = replace_backgrounds(images, masks, pool, draws[0].select(index_in_set))
    assert torch.equal(labels, torch.from_numpy(test_set.labels))
    foreground, background = masks.expand_as(images) == 1.0, masks.expand_as(images) == 0.0
    assert torch.equal(replaced[foreground], images[foreground])
    assert (replaced[background] != images[background]).float().mean() > 0.9


@pytest.fixture(scope="module")
def evaluated(prepared_data, tmp_path_factory):
    """(project, params, report): both modes trained one epoch and evaluated once for the module
    (the tests only read it)."""
    root = tmp_path_factory.mktemp("evaluated") / "project"
    shutil.copytree(prepared_data, root)
    params = load_params(write_params(root, {"train": {"epochs": 1}, "eval": {"replaced_draws": 2}}))
    for mode in ("base", "bgaugment"):
        fit(params, Layout(root), mode, progress=False)
    return root, params, evaluate_trained(params, Layout(root), progress=False)


def test_evaluate_and_report_stage_outputs(evaluated, tmp_path):
    tiny_project, params, report = evaluated

    saved = json.loads((tiny_project / "reports" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(saved["modes"]) == {"base", "bgaugment"} and saved["replaced_draws"] == 2
    conditions = {"clean", "replaced", "only_fg", "only_bg", "mixed_same", "mixed_rand"}
    assert set(saved["conditions"]) == conditions and saved["worst_of_k"] == 5
    for result in [*saved["modes"].values(), *saved["untrained"].values()]:
        assert set(result) == conditions | {"bg_gap", "worst_of_k"}
        for condition in conditions:
            assert set(result[condition]) == {"map_at_r", "precision_at_1", "r_precision"}
        for drawn in ("replaced", "mixed_same", "mixed_rand"):
            assert set(result[drawn]["map_at_r"]) == {"mean", "std", "draws"} and result[drawn]["map_at_r"]["draws"] == 2
        assert 0.0 <= result["clean"]["map_at_r"] <= 1.0
        same, rand = result["mixed_same"]["map_at_r"], result["mixed_rand"]["map_at_r"]
        # Per-draw gaps: their mean is the gap of the means.
        assert result["bg_gap"]["map_at_r"]["mean"] == pytest.approx(same["mean"] - rand["mean"])
        worst = result["worst_of_k"]
        assert worst["k"] == 5 and 0.0 <= worst["map_at_r"] <= worst["query_replaced_map_at_r"] <= 1.0
    eval_dir = tiny_project / "outputs" / "eval" / "synthetic"
    draws_csv = (eval_dir / "test_backgrounds.csv").read_text().splitlines()
    assert len(draws_csv) == 1 + 2 * saved["test_images"]
    assert len((eval_dir / "test_partners.csv").read_text().splitlines()) == 1 + 2 * 2 * saved["test_images"]
    assert len(list((eval_dir / "object_removed").rglob("*.png"))) == saved["test_images"]
    assert (tiny_project / "reports" / "figures" / "conditions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results, figure = write_report(saved, "csv", tmp_path)
    text = results.read_text()
    assert "| synthetic | multi_similarity | base |" in text and "| synthetic | multi_similarity | bgaugment |" in text
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Pooled(torch.nn.Module):
    """The backbone's pooled features alone, computed on their own (the stage gets them
    from the same backbone pass as the initialised model's embeddings)."""

    def __init__(self, embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, images):
        return self.embedder.pooled(images)


def test_untrained_references_are_the_untouched_starting_point(evaluated, tmp_path):
    tiny_project, params, report = evaluated
    layout = Layout(tiny_project)
    assert set(report["untrained"]) == {"initialised", "pooled_features"}

    # Rebuilt independently of any checkpoint: the seeded start that training began from.
    setup, test_set, _ = load_test_split(params, layout)
    loader = DataLoader(test_set, batch_size=params.eval.batch_size)  # the stage's batches: same float sums
    start = initial_model(params.model, params.assets_dir, params.seed).to(memory_format=torch.channels_last).eval()
    assert report["untrained"]["initialised"]["clean"] == retrieval_metrics(*embed(start, loader, setup,
                                                                                  progress=False))
    pooled, _ = embed(Pooled(start), loader, setup, progress=False)
    assert pooled.shape == (len(test_set), 1280)  # EfficientNet-Lite0's features, no embedding layer
    assert report["untrained"]["pooled_features"]["clean"] == retrieval_metrics(pooled, test_set.labels)

    # The same start on the validation split is epoch 0 of the training curve.
    history = torch.load(layout.train_dir("synthetic", "base") / "last.pt", weights_only=True)["history"]
    val_set = MaskedImageDataset(DatasetIndex.read(layout.index_csv("synthetic"), params.selected.root).split("val"),
                                 params.selected.root, layout.masks("synthetic"), eval_transform(params.train))
    val = retrieval_metrics(*embed(start, DataLoader(val_set, batch_size=params.train.eval_batch_size), setup,
                                   progress=False))
    assert history[0]["epoch"] == 0 and history[0]["val_map_at_r"] == val["map_at_r"]

    text = write_report(report, "csv", tmp_path)[0].read_text()
    assert "| untrained, as initialised (backbone + fresh embedding) |" in text
    assert "| untrained, backbone's pooled features |" in text
