"""Each loss of the registry learns a separable toy problem; hyperparameters resolve as documented."""

from __future__ import annotations

import pytest
import torch

from bgbias.core import loss_params
from bgbias.core.errors import BgbiasError
from bgbias.losses.registry import LOSS_BUILDERS, create_loss


def _toy(seed=0):
    # 4 Gaussian clusters in 16-d, 8 points each: separable, but not yet by a random projection.
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=g) * 0.5
    labels = torch.arange(4).repeat_interleave(8)
    return centres[labels] + 0.2 * torch.randn(32, 16, generator=g), labels


@pytest.mark.parametrize("name", list(LOSS_BUILDERS))
def test_loss_falls_on_a_separable_toy_set(name):
    torch.manual_seed(0)
    x, labels = _toy()
    setup = create_loss(name, loss_params.DEFAULT[name], num_classes=4, embedding_dim=8)
    model = torch.nn.Linear(16, 8)
    groups = [{"params": model.parameters(), "lr": 1e-2}]
    if setup.is_classification:
        groups.append({"params": setup.loss.parameters(), "lr": 1e-2})
    optimizer = torch.optim.Adam(groups)
    values = []
    for _ in range(60):
        loss = setup.loss(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    # (multi-similarity cannot go below ~0.64 with alpha 2, base 0.5: its positive term
    # is >= log(1 + 7 exp(-1)) / 2 for 7 positives at similarity 1)
    assert values[0] > 0 and values[-1] < 0.8 * values[0], values[::10]
    # and the embedding separates the classes: every point's nearest neighbour shares its label
    emb = torch.nn.functional.normalize(model(x), dim=1)
    dist = torch.cdist(emb, emb).fill_diagonal_(float("inf"))
    assert torch.equal(labels[dist.argmin(dim=1)], labels)


def test_classification_losses_have_their_own_lr_and_class_count():
    setup = create_loss("arcface", loss_params.resolve("arcface", "cub200"), num_classes=75, embedding_dim=128)
    assert setup.lr_loss == 5.138e-3 and setup.is_classification
    assert setup.loss.W.shape == (128, 75)
    assert create_loss("triplet", {"margin": 0.1}, num_classes=75, embedding_dim=128).lr_loss is None


def test_hyperparameters_are_paper_values_then_overrides():
    assert loss_params.resolve("multi_similarity", "cars196") == {"alpha": 14.359, "beta": 75.835, "base": 0.6616}
    assert loss_params.resolve("triplet", "sop", {"margin": 0.2}) == {"margin": 0.2}
    assert loss_params.resolve("contrastive", "csv") == {"pos_margin": 0.0, "neg_margin": 1.0}
    ms = create_loss("multi_similarity", loss_params.resolve("multi_similarity", "cub200"), 75, 128).loss
    assert (ms.alpha, ms.beta, ms.base) == (0.0100, 50.602, 0.5625)


def test_bad_loss_setups_are_clear_errors():
    with pytest.raises(BgbiasError, match="unknown loss 'arc'"):
        create_loss("arc", {}, 4, 8)
    with pytest.raises(BgbiasError, match="needs hyperparameter 'beta'"):
        create_loss("multi_similarity", {"alpha": 1.0, "base": 0.5}, 4, 8)
    with pytest.raises(BgbiasError, match="at least 2 train classes"):
        create_loss("normalized_softmax", loss_params.DEFAULT["normalized_softmax"], 1, 8)
