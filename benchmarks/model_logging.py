"""What logging the best model as an MLflow Model adds to a training, and how fast the
registered model answers: seconds to log and register (`MlflowTracker.log_model`, as the
end of `bgbias train` does; the first call in a process also pays MLflow's one-time
imports and its installed-packages scan), seconds to load `models:/NAME@ALIAS` from the
registry, and embedding throughput of the loaded pyfunc model on raw images.

The model is the params file's backbone and embedding size at its starting weights (the
time does not depend on the weight values), in a temporary MLflow store; the images are
seeded noise at the synthetic set's size.

    python benchmarks/model_logging.py --repeats 3 --images 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bgbias.core.config import load_params
from bgbias.models import initial_model
from bgbias.tracking.mlflow import MlflowTracker, load_registered_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="models logged (trainings) in one process")
    parser.add_argument("--images", type=int, default=200, help="images embedded by the loaded model")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    args = parser.parse_args()

    params = load_params(args.params)
    model = initial_model(params.model, params.assets_dir, params.seed)
    config = {"model": params.model.model_dump(mode="json"), "dataset": params.dataset, "loss": params.loss,
              "mode": "base"}
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        best = root / "best.pt"
        torch.save({"model": model.state_dict(), "config": json.dumps(config), "epoch": 1, "metric": 0.5,
                    "selection": "val_map_at_r"}, best)
        tracker = MlflowTracker.for_project(root)
        seconds = []
        for i in range(args.repeats):
            tracker.start(params.dataset, f"benchmark-{i}", {}, {})
            start = time.perf_counter()
            tracker.log_model(best, "bgbias-benchmark", "base", images[:2, :params.train.crop, :params.train.crop],
                              params.train.resize, params.train.crop)
            seconds.append(time.perf_counter() - start)
            tracker.finish()
        start = time.perf_counter()
        served, key = load_registered_model("models:/bgbias-benchmark@base", tracker.uri)
        load_seconds = time.perf_counter() - start
        served.predict(images[:8])  # warm-up
        start = time.perf_counter()
        served.predict(images)
        predict_seconds = time.perf_counter() - start
    print(f"backbone {params.model.backbone}, {params.model.embedding_dim}-d, resize {params.train.resize} / "
          f"crop {params.train.crop}, {torch.get_num_threads()} threads")
    print(f"log + register: first {seconds[0]:.2f} s, then {', '.join(f'{s:.2f}' for s in seconds[1:])} s")
    print(f"load {key} from the registry: {load_seconds:.2f} s")
    print(f"embed {args.images} images of {args.size} px: {predict_seconds:.2f} s "
          f"({args.images / predict_seconds:.1f} images/s)")


if __name__ == "__main__":
    main()
