"""A trained embedder as a self-contained inference model: RGB images in, L2-normalised
embeddings out, with evaluation's preprocessing (resize of the shorter side, centre crop,
the backbone's normalisation) inside. `tracking.py` logs it as an MLflow pyfunc model.

Why no MLflow here: pyfunc's "loader module" form only asks for a module with
`_load_pyfunc(data_path)` returning an object with `predict`, so this module needs no
`PythonModel` base class, MLflow stays imported by `tracking.py` alone, and the model is
plain torch code that tests can call directly. The logged model carries this package
(`code_paths`) and the model data written by `write_model_data`: the weights as a state dict
and the model settings, so it loads offline (no ImageNet weights, no hub).

Input: uint8 [B, H, W, 3] (one size per call; RGB, as PIL or numpy images come).
Output: float32 [B, embedding_dim], each row of unit length.
Device: CUDA when there is one, else CPU; `BGBIAS_DEVICE=cpu|cuda` chooses (read at load).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS, SETTINGS = "embedder.pt", "settings.json"
# The pins of pyproject.toml that the model's code imports (tests/test_served_model.py keeps them equal).
REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "numpy==2.4.6", "pydantic==2.14.4",
                "pyyaml==6.0.4", "pillow==12.3.0", "mlflow==3.17.0")
CHUNK = 64  # images per forward pass: bounds memory for large batches


def write_model_data(best: dict, resize: int, crop: int, folder: Path) -> Path:
    """The model data of a `best.pt` checkpoint (already loaded): weights and settings."""
    config = json.loads(best["config"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(best["model"], folder / WEIGHTS)
    settings = {"model": config["model"], "resize": resize, "crop": crop, "dataset": config["dataset"],
                "loss": config["loss"], "mode": config["mode"], "seed": config.get("seed"), "epoch": int(best["epoch"]),
                "selection": best["selection"], "selection_value": float(best["metric"])}
    (folder / SETTINGS).write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return folder


def read_settings(folder: Path) -> dict:
    return json.loads((Path(folder) / SETTINGS).read_text(encoding="utf-8"))


class ServedEmbedder:
    """The model a pyfunc `predict` calls: preprocessing + embedder + L2 normalisation."""

    def __init__(self, folder: Path, device: str | None = None):
        from bgbias.core.config import ModelConfig, TrainConfig
        from bgbias.data.transforms import eval_transform
        from bgbias.models.checkpoint import safe_load
        from bgbias.models import create_model

        self.settings = read_settings(folder)
        self.device = torch.device(device or os.environ.get("BGBIAS_DEVICE")
                                   or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = create_model(ModelConfig.model_validate(self.settings["model"]), Path("."), pretrained=False)
        model.load_state_dict(safe_load(Path(folder) / WEIGHTS, "model weights"))
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        # Exactly evaluation's transform (TrainConfig only carries the two sizes here).
        self.transform = eval_transform(TrainConfig(resize=self.settings["resize"], crop=self.settings["crop"]))

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> float32 [B, dim], unit rows."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape [B, H, W, 3], got {images.dtype} {images.shape}")
        out = []
        for start in range(0, len(images), CHUNK):
            batch = torch.from_numpy(images[start:start + CHUNK]).permute(0, 3, 1, 2)  # [b, 3, H, W] uint8
            batch = torch.stack([self.transform(image) for image in batch])  # per image, as the loader does
            batch = batch.to(self.device).float().div_(255.0).contiguous(memory_format=torch.channels_last)
            out.append(F.normalize(self.model(batch).float(), dim=1).cpu())
        if not out:
            return np.zeros((0, self.settings["model"]["embedding_dim"]), dtype=np.float32)
        return torch.cat(out).numpy()

    def predict(self, model_input, params=None) -> np.ndarray:  # the pyfunc interface
        if isinstance(model_input, dict):  # a named tensor input, e.g. {"images": ...}
            (model_input,) = model_input.values()
        return self.embed(model_input)


def _load_pyfunc(data_path: str) -> ServedEmbedder:
    """MLflow's loader-module entry point."""
    return ServedEmbedder(Path(data_path))
