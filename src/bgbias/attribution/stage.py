"""The attribution stage: saliency maps and attention scores of both modes' best models
on a seeded sample of test images, clean and with the first evaluation draw of
test-pool backgrounds; `reports/attention.json` and a picture grid for MLflow."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from bgbias.attribution.saliency import attention_score, saliency_maps
from bgbias.core.config import MODES, Params
from bgbias.data.bgaugment import replace_backgrounds
from bgbias.data.transforms import split_batch
from bgbias.evaluation.retrieval import attach_training_run, background_draws, load_trained, load_test_split
from bgbias.core.seeds import Stream, derived_seed
from bgbias.core.files import atomic_write, write_json
from bgbias.core.layout import Layout
from bgbias.losses.registry import create_loss
from bgbias.tracking.mlflow import NullTracker, Tracker

log = logging.getLogger(__name__)


def _summary(scores: list[float]) -> dict:
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "n": len(scores)}


def attribute_trained(params: Params, layout: Layout, tracker: Tracker | None = None, progress: bool = True,
                      modes: tuple[str, ...] = MODES) -> dict:
    """`modes`: the trainings to attribute (a grid cell attributes its own one)."""
    tracker = tracker or NullTracker()
    cfg = params.attribution
    setup, test_set, pool = load_test_split(params, layout)
    rng = np.random.default_rng(derived_seed(params.seed, Stream.ATTRIBUTION_SAMPLE))
    chosen = np.sort(rng.choice(len(test_set), min(cfg.images, len(test_set)), replace=False))
    draw = background_draws(pool, len(test_set), params.seed, 1)[0]  # the evaluate stage's first draw

    report: dict = {"dataset": params.dataset, "loss": params.loss, "images": len(chosen), "modes": {}}
    pictures: dict = {}
    for mode in modes:
        model, config = load_trained(params, layout, mode, setup.device)
        # The distance is the loss's own (class count does not affect it).
        distance = create_loss(config["loss"], config["loss_params"], 2, params.model.embedding_dim).loss.distance
        generator = torch.Generator().manual_seed(derived_seed(params.seed, Stream.ATTRIBUTION_NOISE))
        scores: dict[str, list[float]] = {"clean": [], "replaced": []}
        for start in tqdm(range(0, len(chosen), cfg.batch_size), desc=f"saliency {mode}", disable=not progress):
            ids = torch.as_tensor(chosen[start:start + cfg.batch_size])
            batch = torch.stack([test_set[int(i)][0] for i in ids]).to(setup.device)
            images, masks = split_batch(batch)  # [b, 3, H, W], [b, 1, H, W]
            replaced = replace_backgrounds(images, masks, pool, draw.select(ids))
            for condition, x in (("clean", images), ("replaced", replaced)):
                maps = saliency_maps(model, distance, setup.to_input(x), generator, cfg.noisy_copies)  # [b, H, W]
                scores[condition] += attention_score(maps, masks[:, 0]).tolist()
                if start == 0:
                    pictures.setdefault("image", images.cpu())
                    pictures.setdefault("mask", masks[:, 0].cpu())
                    pictures.setdefault("replaced", replaced.cpu())
                    pictures[f"{mode}_{condition}"] = maps.detach().cpu()
        report["modes"][mode] = {c: _summary(s) for c, s in scores.items()}
        log.info("%s: attention score clean %.3f +- %.3f, replaced %.3f +- %.3f (n=%d)", mode,
                 report["modes"][mode]["clean"]["mean"], report["modes"][mode]["clean"]["std"],
                 report["modes"][mode]["replaced"]["mean"], report["modes"][mode]["replaced"]["std"], len(chosen))
    write_json(layout.attention_report, report)
    figure = layout.figures / "attribution.png"
    attribution_grid(pictures, min(cfg.figure_rows, len(chosen)), figure)
    for mode in modes:
        if attach_training_run(tracker, layout, params.dataset, mode):
            tracker.log_metrics({f"test_attention_{c}": v["mean"] for c, v in report["modes"][mode].items()})
            tracker.log_artifact(figure, "attribution")
            tracker.log_artifact(layout.attention_report, "attribution")
    return report


def attribution_grid(pictures: dict, rows: int, path) -> None:
    """Rows: test images; columns: image, mask, base and bgaugment saliency, then the same
    on the replaced background."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(key, title) for key, title in (
        ("image", "image"), ("mask", "mask"), ("base_clean", "base"), ("bgaugment_clean", "bgaugment"),
        ("replaced", "replaced bg"), ("base_replaced", "base"), ("bgaugment_replaced", "bgaugment"))
        if key in pictures]  # a grid cell has one mode's maps
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), dpi=100, squeeze=False)
    for r in range(rows):
        for c, (key, title) in enumerate(columns):
            ax = axes[r][c]
            value = pictures[key][r]
            if value.ndim == 3:  # RGB [3, H, W]
                ax.imshow(value.permute(1, 2, 0).clamp(0, 1).numpy())
            else:
                ax.imshow(value.numpy(), cmap="gray" if key == "mask" else "inferno", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
