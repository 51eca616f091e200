"""u2netp (Qin et al., U^2-Net, the small variant rembg uses) as a torch module.

The architecture is U^2-Net's published one (RSU blocks of heights 7..4 and the dilated
RSU-4F); the weights come from the pinned `u2netp.onnx`, whose exporter folded every
BatchNorm into the convolution before it, so each conv here has a bias and no BN follows.
The ONNX graph lists its Conv nodes in execution order: `load_onnx_weights` records the
order in which this module calls its convolutions and pairs them one to one, checking
every shape, dilation and padding (a mismatch is an error, not a partial load).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.core.errors import BgbiasError
from bgbias.masks.onnx_weights import read_convolutions


class ConvRelu(nn.Sequential):
    """U^2-Net's REBNCONV with its BatchNorm folded into the conv."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True))


def upsample_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # ONNX Resize linear, pytorch_half_pixel: bilinear without corner alignment.
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of `height` levels; `pooled=False` is RSU-4F (dilations instead of pooling)."""

    def __init__(self, height: int, cin: int, mid: int, cout: int, pooled: bool = True):
        super().__init__()
        self.pooled = pooled
        dilations = [1] * (height - 1) + [2] if pooled else [2**i for i in range(height)]
        self.conv_in = ConvRelu(cin, cout)
        self.encoder = nn.ModuleList(ConvRelu(cout if i == 0 else mid, mid, d) for i, d in enumerate(dilations))
        self.decoder = nn.ModuleList(ConvRelu(2 * mid, cout if i == 0 else mid, d)
                                     for i, d in reversed(list(enumerate(dilations[:-1]))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.conv_in(x)
        skips, hx = [], hxin
        for i, conv in enumerate(self.encoder):
            if self.pooled and 0 < i < len(self.encoder) - 1:
                hx = F.max_pool2d(hx, 2, 2, ceil_mode=True)
            hx = conv(hx)
            skips.append(hx)
        hx = skips.pop()
        for conv in self.decoder:
            skip = skips.pop()
            if self.pooled and hx.shape[2:] != skip.shape[2:]:
                hx = upsample_like(hx, skip)
            hx = conv(torch.cat((hx, skip), 1))
        return hx + hxin


class U2NetP(nn.Module):
    """Returns the fused saliency map d0 after the sigmoid, (N, 1, H, W): rembg's output 0."""

    def __init__(self):
        super().__init__()
        heights = (7, 6, 5, 4)
        self.encoders = nn.ModuleList([RSU(h, 3 if h == 7 else 64, 16, 64) for h in heights]
                                      + [RSU(4, 64, 16, 64, pooled=False) for _ in range(2)])
        self.decoders = nn.ModuleList([RSU(4, 128, 16, 64, pooled=False)]
                                      + [RSU(h, 128, 16, 64) for h in reversed(heights)])
        self.sides = nn.ModuleList(nn.Conv2d(64, 1, 3, padding=1) for _ in range(6))
        self.outconv = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, hx = [], x
        for i, stage in enumerate(self.encoders):
            if i:
                hx = F.max_pool2d(hx, 2, 2, ceil_mode=True)
            hx = stage(hx)
            skips.append(hx)
        features = [skips.pop()]  # hx6, then hx5d .. hx1d
        for stage in self.decoders:
            skip = skips.pop()
            features.append(stage(torch.cat((upsample_like(features[-1], skip), skip), 1)))
        top = features[-1]
        sides = [side(f) for side, f in zip(self.sides, reversed(features))]  # d1 (full size) .. d6
        sides = [sides[0]] + [upsample_like(d, top) for d in sides[1:]]
        return torch.sigmoid(self.outconv(torch.cat(sides, 1)))


def _execution_order(model: nn.Module) -> list[nn.Conv2d]:
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda mod, *_: order.append(mod))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def load_onnx_weights(model: U2NetP, path: Path) -> U2NetP:
    convs, nodes = _execution_order(model), read_convolutions(path)
    if len(convs) != len(nodes):
        raise BgbiasError(f"{path}: {len(nodes)} convolutions, u2netp has {len(convs)}")
    for i, (conv, (node, weight, bias)) in enumerate(zip(convs, nodes)):
        pads = node.attributes.get("pads", [0] * 4)
        if (tuple(weight.shape) != tuple(conv.weight.shape) or bias is None
                or list(node.attributes.get("dilations", [1, 1])) != list(conv.dilation)
                or pads[:2] != list(conv.padding)):
            raise BgbiasError(f"{path}: convolution {i} ({tuple(weight.shape)}, {node.attributes}) does not fit "
                              f"u2netp's {conv}")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.from_numpy(bias))
    return model


def u2netp_from_onnx(path: Path) -> U2NetP:
    return load_onnx_weights(U2NetP(), path).eval()
