"""Attribution as the paper computes it, and its attention score.

Saliency of an image = SmoothGrad of a scalar: the distance (the loss's own distance,
e.g. cosine similarity or L2) between the image's embedding and the embedding of an
all-black image. 25 noisy copies, noise std = 0.15 x (max - min) of the image; per copy
the gradient is averaged over the colour channels and its absolute value taken; the
copies are summed; the map is clipped at its 99th percentile and scaled to [0, 1].

captum's gradient machinery (`Saliency`) computes the per-copy gradients. We do not use
`NoiseTunnel` + `Saliency(abs=True)` for the reduction because its order differs from
the paper's: `Saliency(abs=True)` takes |gradient| per channel *before* any channel
averaging, and NoiseTunnel *averages* the copies instead of summing them (a constant
factor, harmless after normalisation, but the abs order is not). So we ask Saliency for
signed gradients (`abs=False`) of all copies in one batch, then average channels, take
the absolute value and sum over copies ourselves.
"""

from __future__ import annotations

import torch
from torch import nn

NOISY_COPIES = 25
NOISE_SHARE = 0.15
CLIP_PERCENTILE = 99.0


class DistanceToBlack(nn.Module):
    """images [B, 3, H, W] -> distance [B] between each embedding and the black image's."""

    def __init__(self, model: nn.Module, distance: nn.Module):
        super().__init__()
        self.model, self.distance = model, distance

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.model(images)  # [B, dim]
        black = self.model(torch.zeros_like(images[:1]))  # [1, dim]
        return self.distance(embeddings, black)[:, 0]  # [B]


def noisy_copies(images: torch.Tensor, generator: torch.Generator, copies: int = NOISY_COPIES) -> torch.Tensor:
    """[B, 3, H, W] -> [copies, B, 3, H, W]; noise std 0.15 x (max - min) of each image."""
    spread = images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))  # [B]
    noise = torch.randn((copies, *images.shape), generator=generator).to(images.device)
    return images[None] + noise * (NOISE_SHARE * spread).view(1, -1, 1, 1, 1)


def smoothgrad_saliency(forward: nn.Module, noisy: torch.Tensor) -> torch.Tensor:
    """noisy [copies, B, 3, H, W] -> raw saliency [B, H, W] (paper's reduction order)."""
    from captum.attr import Saliency

    copies, batch = noisy.shape[:2]
    flat = noisy.reshape(copies * batch, *noisy.shape[2:]).detach().requires_grad_(True)
    # Signed gradients of each copy's scalar output (captum calls forward on the batch and
    # differentiates the sum of outputs, which is each copy's own gradient).
    gradients = Saliency(forward).attribute(flat, abs=False)  # [copies * B, 3, H, W]
    per_copy = gradients.mean(dim=1).abs()  # [copies * B, H, W]: channel mean, then |.|
    return per_copy.view(copies, batch, *per_copy.shape[1:]).sum(dim=0)  # [B, H, W]


def normalise(saliency: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> [0, 1] per map, clipped at its 99th percentile."""
    flat = saliency.flatten(1)
    top = torch.quantile(flat, CLIP_PERCENTILE / 100, dim=1).clamp_min(1e-12)  # [B]
    return (flat / top[:, None]).clamp(0, 1).view_as(saliency)


def attention_score(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(share of attention inside the mask - share of the image the mask covers) /
    (1 - share the mask covers): 0 = attention spread like the pixels, 1 = all on the
    object, negative = more on the background. saliency, mask [B, H, W] -> [B]."""
    covered = mask.flatten(1).mean(dim=1)
    inside = (saliency * mask).flatten(1).sum(dim=1) / saliency.flatten(1).sum(dim=1).clamp_min(1e-12)
    return (inside - covered) / (1 - covered).clamp_min(1e-12)


def saliency_maps(model: nn.Module, distance: nn.Module, images: torch.Tensor, generator: torch.Generator,
                  copies: int = NOISY_COPIES) -> torch.Tensor:
    """Normalised saliency [B, H, W] of an image batch [B, 3, H, W]."""
    was_training = model.training
    model.eval()
    try:
        raw = smoothgrad_saliency(DistanceToBlack(model, distance), noisy_copies(images, generator, copies))
    finally:
        model.train(was_training)
    return normalise(raw)
