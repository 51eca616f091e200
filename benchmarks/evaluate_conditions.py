"""Extra time of the background-swap conditions and worst-of-K in the evaluate stage: runs
the stage's `evaluate_trained` on the project's trained models twice, with only clean and
replaced (`eval.conditions: []`, `eval.worst_of_k: 0`) and with the params' conditions,
writing into a temp folder (the project's outputs are only read). Prints both times, the
difference and the time of the object removal (inpainting) alone.

    python benchmarks/evaluate_conditions.py [--project .]   # after `dvc repro train@base train@bgaugment`
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bgbias.core.config import load_params
from bgbias.data.conditions import write_object_removed
from bgbias.evaluation.retrieval import evaluate_trained, load_test_split
from bgbias.core.layout import Layout, PointLayout


@dataclass(frozen=True)
class ReadOnlyProject(PointLayout):
    """Writes under `root`; reads the project's data and trained models."""

    def train_dir(self, dataset: str, mode: str) -> Path:
        return Layout(self.project).train_dir(dataset, mode)


def timed(params, layout) -> tuple[float, dict]:
    start = time.perf_counter()
    report = evaluate_trained(params, layout, progress=False)
    return time.perf_counter() - start, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=".")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    params = load_params(project / "params.yaml")
    plain = params.model_copy(update={"eval": params.eval.model_copy(update={"conditions": (), "worst_of_k": 0})})
    with tempfile.TemporaryDirectory() as tmp:
        layout = ReadOnlyProject(Path(tmp), project=project, own_data=False)
        base_seconds, _ = timed(plain, layout)
        full_seconds, report = timed(params, layout)
        _, test_set, _ = load_test_split(params, layout)
        start = time.perf_counter()
        write_object_removed(test_set, Path(tmp) / "removed")
        inpaint_seconds = time.perf_counter() - start
    models = len(report["modes"]) + len(report["untrained"])
    print(f"{report['test_images']} test images, {models} models (trained + untrained references), "
          f"{params.eval.replaced_draws} draws, conditions {list(params.eval.conditions)}, "
          f"worst_of_k {params.eval.worst_of_k}")
    print(f"evaluate, clean + replaced only: {base_seconds:.1f} s")
    print(f"evaluate, all conditions:        {full_seconds:.1f} s (+{full_seconds - base_seconds:.1f} s)")
    print(f"  of which object removal (inpainting, once): {inpaint_seconds:.1f} s")


if __name__ == "__main__":
    main()
