"""Saliency reduction against a plain-PyTorch reference, attention scores by hand, a toy
model that looks only at the centre, and the attribution stage end to end."""

from __future__ import annotations

import json

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from torch import nn

from bgbias.attribution.saliency import (DistanceToBlack, attention_score, noisy_copies, normalise, saliency_maps,
                                smoothgrad_saliency)
from bgbias.core.config import load_params
from bgbias.attribution.stage import attribute_trained
from bgbias.engine.train import fit
from bgbias.core.layout import Layout
from tests.conftest import write_params


class TinyEmbedder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.embedding = nn.Linear(4 * 8 * 8, 6)

    def forward(self, x):
        return self.embedding(torch.tanh(self.conv(x)).flatten(1))


def reference_saliency(model, distance, image, noise):
    """The paper's formula written out: per noisy copy, the gradient of the distance to the
    black image's embedding, averaged over channels, absolute value; summed over copies."""
    black = model(torch.zeros_like(image[None]))
    total = torch.zeros(image.shape[1:])
    for n in noise:
        x = (image + n).detach().requires_grad_(True)
        d = distance(model(x[None]), black)[0, 0]
        (grad,) = torch.autograd.grad(d, x)
        total += grad.mean(dim=0).abs()
    return total


@pytest.mark.parametrize("distance", [CosineSimilarity(), LpDistance()])
def test_reduction_matches_the_plain_pytorch_reference(distance):
    model = TinyEmbedder().eval()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy = noisy_copies(images, torch.Generator().manual_seed(2), copies=5)  # [5, 3, 3, 8, 8]
    ours = smoothgrad_saliency(DistanceToBlack(model, distance), noisy)
    for b in range(3):
        expected = reference_saliency(model, distance, images[b], noisy[:, b] - images[b])
        assert torch.allclose(ours[b], expected, atol=1e-6, rtol=0)


def test_noise_std_is_fifteen_percent_of_the_value_range():
    images = torch.zeros(1, 3, 64, 64)
    images[0, 0, 0, 0] = 2.0  # range 2 -> std 0.3
    noise = noisy_copies(images, torch.Generator().manual_seed(0), copies=25) - images[None]
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)


def test_normalise_clips_at_the_99th_percentile():
    saliency = torch.arange(1, 101, dtype=torch.float32).view(1, 10, 10)
    out = normalise(saliency)
    top = torch.quantile(saliency.flatten(), 0.99)
    assert out.max() == 1.0 and out.min() >= 0
    assert out[0, 0, 0].item() == pytest.approx(1 / top.item())
    assert int((out.flatten() == 1.0).sum()) == int((saliency.flatten() >= top).sum()) == 1  # only 100 > 99.01


def test_attention_score_by_hand():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1  # the object covers 4 of 16 pixels
    on_object = mask.clone()
    uniform = torch.ones(1, 4, 4)
    on_background = 1 - mask
    assert attention_score(on_object, mask).item() == pytest.approx(1.0)
    assert attention_score(uniform, mask).item() == pytest.approx(0.0)
    assert attention_score(on_background, mask).item() == pytest.approx((0 - 0.25) / 0.75)  # -1/3
    # Half of the attention on the object (4 px x 1) and half on the 12 background px:
    half = mask * 1.0 + (1 - mask) * (4 / 12)
    assert attention_score(half, mask).item() == pytest.approx((0.5 - 0.25) / 0.75)


class CentreOnly(nn.Module):
    """Embeds only the central 8x8 of a 16x16 image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * 8 * 8, 6)

    def forward(self, x):
        return self.linear(x[:, :, 4:12, 4:12].flatten(1))


def test_a_model_that_looks_at_the_centre_scores_high_on_centred_objects():
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(4, 16, 16)
    mask[:, 3:13, 3:13] = 1  # centred object, a bit larger than the model's window
    maps = saliency_maps(CentreOnly(), CosineSimilarity(), images, torch.Generator().manual_seed(4), copies=25)
    scores = attention_score(maps, mask)
    assert (scores > 0.95).all(), scores
    corner = torch.zeros(4, 16, 16)
    corner[:, :6, :6] = 1  # an object in the corner, outside the window
    assert (attention_score(maps, corner) < 0).all()


def test_attribution_stage_outputs(tiny_project):
    params = load_params(write_params(tiny_project, {"train": {"epochs": 1},
                                                     "attribution": {"images": 5, "batch_size": 2,
                                                                     "noisy_copies": 3, "figure_rows": 2}}))
    layout = Layout(tiny_project)
    for mode in ("base", "bgaugment"):
        fit(params, layout, mode, progress=False)
    report = attribute_trained(params, layout, progress=False)
    saved = json.loads((tiny_project / "reports" / "attention.json").read_text())
    assert saved == json.loads(json.dumps(report)) and saved["images"] == 5
    for mode in ("base", "bgaugment"):
        for condition in ("clean", "replaced"):
            summary = saved["modes"][mode][condition]
            assert summary["n"] == 5 and -1.0 <= summary["mean"] <= 1.0
    assert (tiny_project / "reports" / "figures" / "attribution.png").read_bytes()[:4] == b"\x89PNG"
