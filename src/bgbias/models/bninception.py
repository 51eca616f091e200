"""BN-Inception (Ioffe & Szegedy, 2015), the backbone of the paper, as a feature extractor.

The layer names, shapes and order follow the widely used ImageNet port
`bn_inception-52deb4733.pth` (Caffe model converted by Cadene's `pretrainedmodels`
package), so that file loads into `BNInception` with `load_state_dict(strict=True)`
once its classifier keys (`last_linear.*`) are dropped; we keep no classifier.
Nothing is downloaded here: the user supplies the weights file.

    state = torch.load(path, map_location="cpu")
    state = {k: v for k, v in state.items() if not k.startswith("last_linear.")}
    BNInception().load_state_dict(state, strict=True)

Input convention of those weights (Caffe heritage): BGR channel order, pixel range
0..255, per-channel mean [104, 117, 128] (B, G, R) subtracted, std [1, 1, 1].
`to_bninception_input` turns a usual RGB batch in [0, 1] into that form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# Caffe BGR mean in 0..255 units, as stated by the weights' publisher.
BGR_MEAN = (104.0, 117.0, 128.0)
FEATURE_DIM = 1024

# One row per Inception block, in network order:
# (name, 1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3, pool, pool_proj)
# A 1x1 width of 0 marks a grid-reduction block (3c, 4e): no 1x1 and no pool
# projection, the 3x3 and second double-3x3 convs have stride 2, and the max-pooled
# input is concatenated as is. Pool kinds: "avg" = 3x3/1 average (padding counted),
# "max" = 3x3/1 max, "max_s2" = 3x3/2 max. All pools use ceil_mode like Caffe.
_BLOCKS = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32),
    ("3b", 64, 64, 96, 64, 96, "avg", 64),
    ("3c", 0, 128, 160, 64, 96, "max_s2", 0),
    ("4a", 224, 64, 96, 96, 128, "avg", 128),
    ("4b", 192, 96, 128, 96, 128, "avg", 128),
    ("4c", 160, 128, 160, 128, 160, "avg", 128),
    ("4d", 96, 128, 192, 160, 192, "avg", 128),
    ("4e", 0, 128, 192, 192, 256, "max_s2", 0),
    ("5a", 352, 192, 320, 160, 224, "avg", 128),
    ("5b", 352, 192, 320, 192, 224, "max", 128),  # 5b really max-pools (GoogLeNet lineage)
)


def _pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
    if kind == "max":
        return nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
    if kind == "max_s2":
        return nn.MaxPool2d(3, stride=2, ceil_mode=True)
    raise ValueError(f"unknown pool kind {kind!r}")


class BNInception(nn.Module):
    """BN-Inception trunk: image (B, 3, H, W) -> feature map (B, 1024, H/32, W/32)."""

    def __init__(self) -> None:
        super().__init__()
        # Each conv+BN unit is registered as two flat attributes, `<name>` and
        # `<name>_bn`, because that is the key layout of the published weights.
        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2)
        self.pool1_3x3_s2 = _pool("max_s2")
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        self.pool2_3x3_s2 = _pool("max_s2")

        c_in = 192
        for name, c1, c3r, c3, cdr, cd, pool, cp in _BLOCKS:
            p = f"inception_{name}_"
            stride = 2 if c1 == 0 else 1
            if c1:
                self._unit(p + "1x1", c_in, c1, 1)
            self._unit(p + "3x3_reduce", c_in, c3r, 1)
            self._unit(p + "3x3", c3r, c3, 3, stride=stride)
            self._unit(p + "double_3x3_reduce", c_in, cdr, 1)
            self._unit(p + "double_3x3_1", cdr, cd, 3)
            self._unit(p + "double_3x3_2", cd, cd, 3, stride=stride)
            setattr(self, p + "pool", _pool(pool))
            if cp:
                self._unit(p + "pool_proj", c_in, cp, 1)
            c_in = c1 + c3 + cd + (cp if cp else c_in)
        assert c_in == FEATURE_DIM

    def _unit(self, name: str, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        # Convs keep their bias (the Caffe model has one) and "same" padding.
        setattr(self, name, nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2))
        setattr(self, name + "_bn", nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1, affine=True))

    def _cbr(self, name: str, x: Tensor) -> Tensor:
        x = getattr(self, name + "_bn")(getattr(self, name)(x))
        return F.relu(x, inplace=True)  # in place is safe: the BN output is not reused

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in the BGR/0..255/mean-subtracted convention -> (B, 1024, h, w)."""
        x = self.pool1_3x3_s2(self._cbr("conv1_7x7_s2", x))
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for name, c1, _, _, _, _, _, cp in _BLOCKS:
            p = f"inception_{name}_"
            branches = []
            if c1:
                branches.append(self._cbr(p + "1x1", x))
            branches.append(self._cbr(p + "3x3", self._cbr(p + "3x3_reduce", x)))
            d = self._cbr(p + "double_3x3_reduce", x)
            branches.append(self._cbr(p + "double_3x3_2", self._cbr(p + "double_3x3_1", d)))
            pooled = getattr(self, p + "pool")(x)
            branches.append(self._cbr(p + "pool_proj", pooled) if cp else pooled)
            x = torch.cat(branches, dim=1)
        return x

    forward = forward_features


def to_bninception_input(x: Tensor) -> Tensor:
    """RGB batch in [0, 1], shape (B, 3, H, W) -> BGR, 0..255, BGR_MEAN subtracted."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W), got shape {tuple(x.shape)}")
    mean = torch.tensor(BGR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.flip(1) * 255.0 - mean
