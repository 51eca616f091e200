"""`reports/figures/conditions.png`: one row per test condition, the same few test images
(the first of each of the first classes) in every row, each exactly as the models see it
(first draw of the drawn conditions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bgbias.data.bgaugment import BackgroundDraw, replace_backgrounds
from bgbias.evaluation.conditions import SwapSuite
from bgbias.core.files import atomic_write


def example_indices(labels: np.ndarray, count: int) -> list[int]:
    """The first image of each of the first `count` classes (in dataset order)."""
    firsts: dict[int, int] = {}
    for i, label in enumerate(labels):
        firsts.setdefault(int(label), i)
    return sorted(firsts.values())[:count]


def condition_rows(suite: SwapSuite, replaced: BackgroundDraw, indices: list[int]) -> dict[str, torch.Tensor]:
    """Condition name -> float [n, 3, H, W] images of the test images `indices`."""
    index = torch.tensor(indices)

    def batch(dataset) -> torch.Tensor:
        return torch.stack([dataset[i][0] for i in indices]).float().div_(255.0)

    plain = batch(suite.test_set)
    images, masks = plain[:, :3], plain[:, 3:4]
    rows = {"clean": images, "replaced": replace_backgrounds(images, masks, suite.pool, replaced.select(index))}
    for name in suite.conditions:
        dataset, compose = suite.view(name)
        rows[name] = compose(batch(dataset))
    if suite.worst_draws:
        rows["worst-of-K (k=1)"] = replace_backgrounds(images, masks, suite.pool, suite.worst_draws[0].select(index))
    return rows


def conditions_figure(suite: SwapSuite, replaced: BackgroundDraw, path: Path, columns: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    indices = example_indices(suite.test_set.labels, columns)
    rows = condition_rows(suite, replaced, indices)
    fig, axes = plt.subplots(len(rows), len(indices), figsize=(1.3 * len(indices) + 1.2, 1.3 * len(rows)),
                             dpi=100, squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(len(indices)):
            ax = axes[r][c]
            ax.imshow(images[c].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"class {int(suite.test_set.labels[indices[c]])}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
