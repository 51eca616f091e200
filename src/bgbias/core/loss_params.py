"""Hyperparameters of the five losses: the paper's per-dataset values and our defaults.

Pure data (no torch import) so params validation can check override keys cheaply.
The paper took its values from the MLRC benchmark (DESIGN.md section 2). ArcFace's
margin is in degrees, as pytorch-metric-learning expects. `lr_loss` is the learning
rate of the loss's own parameters (proxies / class weights) for the two classification
losses.
"""

from __future__ import annotations

HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "contrastive": ("pos_margin", "neg_margin"),
    "triplet": ("margin",),
    "multi_similarity": ("alpha", "beta", "base"),
    "arcface": ("margin", "scale", "lr_loss"),
    "normalized_softmax": ("temperature", "lr_loss"),
}

# Values that must be > 0: the losses divide by alpha, beta and temperature (0 ends in a
# ZeroDivisionError or NaN embeddings), and a learning rate <= 0 does not train.
POSITIVE: frozenset[tuple[str, str]] = frozenset({
    ("multi_similarity", "alpha"), ("multi_similarity", "beta"), ("arcface", "scale"), ("arcface", "lr_loss"),
    ("normalized_softmax", "temperature"), ("normalized_softmax", "lr_loss")})

# Classification (proxy) losses: MPerClassSampler m=1 and a learnable weight matrix.
CLASSIFICATION_LOSSES = frozenset({"arcface", "normalized_softmax"})

PAPER: dict[str, dict[str, dict[str, float]]] = {
    "cars196": {
        "contrastive": {"pos_margin": 0.2652, "neg_margin": 0.5409},
        "triplet": {"margin": 0.1190},
        "multi_similarity": {"alpha": 14.359, "beta": 75.835, "base": 0.6616},
        "arcface": {"margin": 20.522, "scale": 49.502, "lr_loss": 7.399e-6},
        "normalized_softmax": {"temperature": 0.08863, "lr_loss": 0.011046},
    },
    "cub200": {
        "contrastive": {"pos_margin": -0.2000, "neg_margin": 0.3841},
        "triplet": {"margin": 0.09610},
        "multi_similarity": {"alpha": 0.0100, "beta": 50.602, "base": 0.5625},
        "arcface": {"margin": 23.226, "scale": 100.0, "lr_loss": 5.138e-3},
        "normalized_softmax": {"temperature": 0.10875, "lr_loss": 4.469e-3},
    },
    "sop": {
        "contrastive": {"pos_margin": 0.2850, "neg_margin": 0.5130},
        "triplet": {"margin": 0.04519},
        "multi_similarity": {"alpha": 8.4925, "beta": 57.389, "base": 0.4167},
        "arcface": {"margin": 18.632, "scale": 220.36, "lr_loss": 2.019e-3},
        "normalized_softmax": {"temperature": 0.06306, "lr_loss": 5.468e-4},
    },
}

# Datasets without paper values (synthetic, folder, csv): pytorch-metric-learning 2.9's
# own defaults, plus lr_loss 1e-3 (10-100x the embedder's lr, as in the paper's values).
DEFAULT: dict[str, dict[str, float]] = {
    "contrastive": {"pos_margin": 0.0, "neg_margin": 1.0},
    "triplet": {"margin": 0.05},
    "multi_similarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5},
    "arcface": {"margin": 28.6, "scale": 64.0, "lr_loss": 1e-3},
    "normalized_softmax": {"temperature": 0.05, "lr_loss": 1e-3},
}


# Optuna search spaces (name -> (low, high, log scale)), each covering the paper's values
# for all three datasets (table above) and the defaults. `lr` (the embedder's learning
# rate) is searched too when `tune.search_lr` is set.
SEARCH_SPACES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "contrastive": {"pos_margin": (-0.25, 0.5, False), "neg_margin": (0.2, 1.5, False)},
    "triplet": {"margin": (0.01, 0.5, True)},
    "multi_similarity": {"alpha": (0.005, 20.0, True), "beta": (1.0, 100.0, True), "base": (0.0, 1.0, False)},
    "arcface": {"margin": (5.0, 60.0, False), "scale": (10.0, 300.0, True), "lr_loss": (1e-6, 1e-1, True)},
    "normalized_softmax": {"temperature": (0.01, 0.5, True), "lr_loss": (1e-5, 1e-1, True)},
}
LR_SEARCH_SPACE = (1e-6, 1e-3, True)


def resolve(loss: str, dataset_format: str, overrides: dict[str, float] | None = None,
            tuned: dict[str, float] | None = None) -> dict[str, float]:
    """The hyperparameters a run uses: tuned values when given, else the paper's values
    for the dataset's format (else the defaults); then the user's overrides on top."""
    values = dict(tuned if tuned is not None else (PAPER.get(dataset_format, {}).get(loss) or DEFAULT[loss]))
    values.update(overrides or {})
    return values
