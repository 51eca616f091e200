"""Per-query AP@R against a brute-force reference and PML; the condition suite end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgbias.core.config import load_params
from bgbias.data.bgaugment import composite
from bgbias.data.conditions import object_region
from bgbias.evaluation.conditions import build_suite
from bgbias.engine.embed import average_precision_at_r, retrieval_metrics
from bgbias.evaluation.retrieval import load_test_split
from bgbias.core.layout import Layout
from tests.conftest import write_params


def brute_force_ap_at_r(queries, gallery, labels):
    """Straight from the definition, one query at a time."""
    out = []
    for i, q in enumerate(queries):
        others = [j for j in range(len(gallery)) if j != i]
        order = sorted(others, key=lambda j: float(np.sum((q - gallery[j]) ** 2)))
        r = sum(labels[j] == labels[i] for j in others)
        hits, total = 0, 0.0
        for rank, j in enumerate(order[:r], start=1):
            if labels[j] == labels[i]:
                hits += 1
                total += hits / rank
        out.append(total / r if r else np.nan)
    return np.array(out)


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_ap_at_r_by_hand_and_equal_to_pml_when_queries_are_the_gallery():
    # Angles on the unit circle (L2 order = angle order, no ties); labels 0,0,0,1,1.
    angles = np.radians([0.0, 10.0, 60.0, 28.0, 40.0])
    x = unit(np.stack([np.cos(angles), np.sin(angles)], 1))
    labels = np.array([0, 0, 0, 1, 1])
    ap = average_precision_at_r(x, x, labels)
    # q0 (0):  10(0) 28(1)  -> R=2 [hit, miss]  = (1/1) / 2
    # q1 (10): 0(0) 28(1)   -> R=2 [hit, miss]  = 1/2
    # q2 (60): 40(1) 28(1)  -> R=2 [miss, miss] = 0
    # q3 (28): 40(1)        -> R=1 [hit]        = 1
    # q4 (40): 28(1)        -> R=1 [hit]        = 1
    assert ap == pytest.approx([0.5, 0.5, 0.0, 1.0, 1.0])
    assert ap == pytest.approx(brute_force_ap_at_r(x, x, labels))
    assert ap.mean() == pytest.approx(retrieval_metrics(x, labels)["map_at_r"])

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=60)
    x = unit(rng.normal(size=(60, 8)))
    assert average_precision_at_r(x, x, labels, chunk=7).mean() == pytest.approx(retrieval_metrics(x, labels)["map_at_r"])


def test_ap_at_r_with_other_queries_than_the_gallery_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 4)
    gallery = unit(rng.normal(size=(20, 6)))
    queries = unit(gallery + 0.8 * rng.normal(size=(20, 6)))  # "the same images on other backgrounds"
    assert average_precision_at_r(queries, gallery, labels, chunk=3) == pytest.approx(
        brute_force_ap_at_r(queries, gallery, labels))
    single = average_precision_at_r(unit([[1, 0], [0, 1]]), unit([[1, 0], [0, 1]]), np.array([0, 1]))
    assert np.isnan(single).all()  # no other image of their class: no R


def test_swap_views_compose_the_right_pixels(tiny_project):
    params = load_params(write_params(tiny_project, {"eval": {"replaced_draws": 2, "worst_of_k": 2}}))
    layout = Layout(tiny_project)
    setup, test_set, pool = load_test_split(params, layout)
    suite = build_suite(params.eval, params.seed, test_set, pool, tiny_project / "eval", setup)
    assert len(suite.partners["mixed_same"]) == 2 and len(suite.worst_draws) == 2
    x = test_set[0][0].float() / 255  # [4, H, W]
    image, mask = x[:3], x[3:]

    dataset, compose = suite.view("only_bg")
    only_bg = compose(dataset[0][0][None].float() / 255)[0]
    outside = ~torch.from_numpy(object_region(mask[0].numpy()))
    assert torch.allclose(only_bg[:, outside], image[:, outside], atol=1 / 255)  # untouched outside the region
    assert (only_bg[:, ~outside] - image[:, ~outside]).abs().mean() > 0.05  # the object is gone

    j = int(suite.partners["mixed_same"][1][0])
    assert test_set.labels[j] == test_set.labels[0] and j != 0
    dataset, compose = suite.view("mixed_same", 1)
    mixed = compose(dataset[0][0][None].float() / 255)[0]
    partner_bg = suite.view("only_bg")[0][j][0][4:].float() / 255
    assert torch.allclose(mixed, composite(image, mask, partner_bg), atol=1e-6)


def test_mlflow_names_of_the_conditions_are_the_same_for_every_model():
    from bgbias.evaluation.retrieval import flat_test_metrics

    metric = {"map_at_r": 0.5, "precision_at_1": 0.6, "r_precision": 0.4}
    drawn = {k: {"mean": v, "std": 0.1, "draws": 2} for k, v in metric.items()}
    result = {"clean": metric, "replaced": drawn, "only_fg": metric, "only_bg": metric, "mixed_same": drawn,
              "mixed_rand": drawn, "bg_gap": {"map_at_r": {"mean": 0.0, "std": 0.05, "draws": 2}},
              "worst_of_k": {"map_at_r": 0.25, "k": 5, "query_replaced_map_at_r": 0.4}}
    flat = flat_test_metrics(result)
    assert flat["test_only_bg_map_at_r"] == 0.5 and flat["test_mixed_rand_map_at_r_std"] == 0.1
    assert flat["test_bg_gap_map_at_r"] == 0.0 and flat["test_bg_gap_map_at_r_std"] == 0.05
    assert flat["test_worst_of_k_map_at_r"] == 0.25
    assert len(flat) == 3 + 3 * 3 * 2 + 2 * 3 + 2 + 1
    older = flat_test_metrics({"clean": metric, "replaced": drawn})  # a metrics.json without the conditions
    assert set(older) == {k for k in flat if k.startswith(("test_clean", "test_replaced"))}
