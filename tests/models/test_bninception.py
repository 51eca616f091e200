"""BNInception: shapes, size and key layout of the published ImageNet weights; input conversion."""

from __future__ import annotations

import pytest
import torch

from bgbias.models.bninception import BNInception, to_bninception_input

# Counted on Cadene's reference implementation (pretrainedmodels BNInception),
# excluding its last_linear classifier (1,025,000 more parameters).
N_PARAMS = 10_270_240
# 69 conv+BN units -> 69 convs + 69 BNs, plus 2 stem pools and one pool per Inception block (10).
N_TOP_LEVEL_MODULES = 150
# Each unit: conv weight+bias, BN weight+bias+running_mean+running_var+num_batches_tracked.
N_STATE_KEYS = 69 * 7


@pytest.fixture(scope="module")
def model() -> BNInception:
    torch.manual_seed(0)
    return BNInception().eval()


@pytest.mark.parametrize("size, spatial", [(224, 7), (227, 7)])
def test_feature_map_shape(model: BNInception, size: int, spatial: int) -> None:
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1024, spatial, spatial)
    assert torch.isfinite(out).all()


def test_forward_is_forward_features(model: BNInception) -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x))


def test_parameter_count(model: BNInception) -> None:
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS


def test_module_and_key_layout(model: BNInception) -> None:
    names = sorted(name for name, _ in model.named_children())
    assert len(names) == N_TOP_LEVEL_MODULES
    assert names[0] == "conv1_7x7_s2" and names[-1] == "pool2_3x3_s2"
    keys = list(model.state_dict())
    assert len(keys) == N_STATE_KEYS
    assert keys[0] == "conv1_7x7_s2.weight"
    assert keys[-1] == "inception_5b_pool_proj_bn.num_batches_tracked"
    assert not any(k.startswith("last_linear") for k in keys)
    assert model.inception_3a_3x3_reduce.weight.shape == (64, 192, 1, 1)
    assert model.inception_4e_double_3x3_2.stride == (2, 2)


def test_state_dict_round_trip_strict(model: BNInception) -> None:
    other = BNInception()
    other.load_state_dict(model.state_dict(), strict=True)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k


def test_to_bninception_input_hand_computed() -> None:
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    # BGR order, x255, minus mean (104, 117, 128):
    # B = 0.6*255 - 104 = 49, G = 0.4*255 - 117 = -15, R = 0.2*255 - 128 = -77
    out = to_bninception_input(rgb)
    assert out.shape == (1, 3, 1, 1)
    assert torch.allclose(out.flatten(), torch.tensor([49.0, -15.0, -77.0]), atol=1e-4)


def test_to_bninception_input_rejects_non_rgb() -> None:
    with pytest.raises(ValueError):
        to_bninception_input(torch.zeros(1, 1, 4, 4))
