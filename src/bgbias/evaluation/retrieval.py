"""Test-set retrieval of the trained models: MAP@R, P@1 and R-Precision on the clean test
images and on the same images with backgrounds from the *test* pool (never seen in
training), over `eval.replaced_draws` seeded draws shared by both modes."""

from __future__ import annotations

import json
import logging

import torch
from torch.utils.data import DataLoader

from bgbias.core.config import MODES, ModelConfig, Params
from bgbias.data.bgaugment import BackgroundDraw, BackgroundPool
from bgbias.data.datasets import DatasetIndex
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.data.transforms import eval_transform
from bgbias.models.checkpoint import load_checkpoint
from bgbias.evaluation.figure import conditions_figure
from bgbias.evaluation.conditions import SwapSuite, build_suite, evaluate_swaps, write_suite_draws
from bgbias.engine.device import DeviceSetup, device_setup
from bgbias.engine.embed import METRICS, embed_heads, retrieval_metrics, summarize_draws
from bgbias.core.seeds import Stream, derived_seed
from bgbias.core.errors import BgbiasError
from bgbias.core.files import write_json, write_text
from bgbias.data.inputs import data_inputs
from bgbias.core.layout import Layout
from bgbias.tracking.lineage import evaluation_input
from bgbias.models import Embedder, StartingPoint, create_model, initial_model
from bgbias.tracking.mlflow import NullTracker, Tracker

log = logging.getLogger(__name__)


def load_trained(params: Params, layout: Layout, mode: str, device: torch.device) -> tuple[Embedder, dict]:
    """The best checkpoint of a mode, rebuilt with the model settings it was trained with."""
    path = layout.train_dir(params.dataset, mode) / "best.pt"
    best = load_checkpoint(path)
    try:
        config = json.loads(best["config"])
        model = create_model(ModelConfig.model_validate(config["model"]), params.assets_dir, pretrained=False)
        model.load_state_dict(best["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # ValidationError is a ValueError
        raise BgbiasError(f"checkpoint {path} is not a best.pt of `bgbias train` ({type(exc).__name__}); "
                          f"run `dvc repro train@{mode}` again") from None
    return model.to(device, memory_format=torch.channels_last).eval(), config


def attach_training_run(tracker: Tracker, layout: Layout, dataset: str, mode: str) -> bool:
    """Point `tracker` at the MLflow run of a mode's training (kept in its last.pt), so later
    stages log beside it; False when that training was not tracked."""
    run_id = load_checkpoint(layout.train_dir(dataset, mode) / "last.pt").get("run_id")
    if run_id:
        tracker.attach(run_id)
    return bool(run_id)


def load_test_split(params: Params, layout: Layout) -> tuple[DeviceSetup, MaskedImageDataset, BackgroundPool]:
    """The device, the test images (with masks, eval transform) and the test background pool."""
    setup = device_setup(params.train.device, params.train.workers)
    index = DatasetIndex.read(layout.index_csv(params.dataset), params.selected.root)
    if not index.split("test"):  # (a class_split whose test range names no class): refused before any work
        raise BgbiasError(f"{layout.index_csv(params.dataset)}: the test split has no images "
                          f"(check datasets.{params.dataset}.class_split)")
    test_set = MaskedImageDataset(index.split("test"), index.root, layout.masks(params.dataset),
                                  eval_transform(params.train))
    pool = BackgroundPool.from_folder(layout.backgrounds / "test", params.train.resize, setup.device)
    return setup, test_set, pool


def background_draws(pool: BackgroundPool, n: int, seed: int, count: int) -> list[BackgroundDraw]:
    return [pool.draw(n, torch.Generator().manual_seed(derived_seed(seed, Stream.TEST_DRAWS, d))) for d in range(count)]


def _write_draws(path, dataset: MaskedImageDataset, pool: BackgroundPool, draws: list[BackgroundDraw]) -> None:
    rows = ["image,draw,background,side,centre_x,centre_y"]
    for d, draw in enumerate(draws):
        for i, sample in enumerate(dataset.samples):
            side, cx, cy = draw.box[i].tolist()
            rows.append(f"{sample.path},{d},{pool.names[draw.photo[i]]},{side:.6f},{cx:.6f},{cy:.6f}")
    write_text(path, "\n".join(rows) + "\n")


def evaluate_heads(model: torch.nn.Module, loader: DataLoader, setup: DeviceSetup, pool: BackgroundPool,
                   draws: list[BackgroundDraw], progress: bool = True,
                   suite: SwapSuite | None = None) -> dict[str, dict]:
    """The test results of each output head of `model` (engine/evaluate.embed_heads), all
    heads from the same passes over the test images."""
    clean, labels = embed_heads(model, loader, setup, desc="test clean", progress=progress)
    replaced: dict[str, list[dict[str, float]]] = {head: [] for head in clean}
    for d, draw in enumerate(draws):
        heads = embed_heads(model, loader, setup, pool, draw, desc=f"test replaced {d + 1}", progress=progress)[0]
        for head, embeddings in heads.items():
            replaced[head].append(retrieval_metrics(embeddings, labels))
    results = {head: {"clean": retrieval_metrics(embeddings, labels), "replaced": summarize_draws(replaced[head])}
               for head, embeddings in clean.items()}
    if suite is not None:  # the background-swap conditions and worst-of-K
        for head, swaps in evaluate_swaps(model, suite, setup, clean, progress).items():
            results[head].update(swaps)
    return results


def evaluate_trained(params: Params, layout: Layout, tracker: Tracker | None = None, progress: bool = True,
                     modes: tuple[str, ...] = MODES) -> dict:
    """`modes`: the trainings to evaluate (a grid cell evaluates its own one)."""
    tracker = tracker or NullTracker()
    setup, test_set, pool = load_test_split(params, layout)
    # The checkpoints first: a refused one stops the stage before it writes anything.
    trained = {mode: load_trained(params, layout, mode, setup.device) for mode in modes}
    loader = DataLoader(test_set, batch_size=params.eval.batch_size, shuffle=False, **setup.loader_options())
    draws = background_draws(pool, len(test_set), params.seed, params.eval.replaced_draws)
    eval_dir = layout.eval_dir(params.dataset)
    _write_draws(eval_dir / "test_backgrounds.csv", test_set, pool, draws)
    suite = build_suite(params.eval, params.seed, test_set, pool, eval_dir, setup)
    write_suite_draws(eval_dir, suite)
    conditions_figure(suite, draws[0], layout.conditions_figure)

    report: dict = {"dataset": params.dataset, "loss": params.loss, "test_images": len(test_set),
                    "test_classes": test_set.num_classes, "replaced_draws": len(draws),
                    "conditions": ["clean", "replaced", *suite.conditions], "worst_of_k": len(suite.worst_draws),
                    "modes": {}}
    for mode, (model, _) in trained.items():
        (result,) = evaluate_heads(model, loader, setup, pool, draws, progress, suite).values()  # one head
        report["modes"][mode] = _log_result(mode, result)
    references = untrained_references(trained[modes[0]][1], params, setup.device)
    report["untrained"] = {name: _log_result(f"untrained ({name})", result) for name, result in
                           evaluate_heads(references, loader, setup, pool, draws, progress, suite).items()}
    flat = {f"untrained_{name}_{k}": v for name, result in report["untrained"].items()
            for k, v in flat_test_metrics(result, prefix="test").items()}
    tested_on = None
    for mode in modes:
        if attach_training_run(tracker, layout, params.dataset, mode):
            tracker.log_metrics({**flat_test_metrics(report["modes"][mode]), **flat})
            tested_on = tested_on or evaluation_input(params, layout, data_inputs(params, layout), len(test_set),
                                                      test_set.num_classes, len(pool))
            tracker.log_dataset(tested_on)
    write_json(layout.metrics_report, report)
    return report


def untrained_references(config: dict, params: Params, device: torch.device) -> StartingPoint:
    """The trained models' starting point, rebuilt from their training config: as
    initialised (backbone + the seeded fresh embedding layer) and the backbone's pooled
    features alone (no embedding layer), both from one pass of the backbone."""
    model = initial_model(ModelConfig.model_validate(config["model"]), params.assets_dir, int(config["seed"]))
    return StartingPoint(model).to(device, memory_format=torch.channels_last).eval()


def _log_result(name: str, result: dict) -> dict:
    clean, replaced = result["clean"]["map_at_r"], result["replaced"]["map_at_r"]["mean"]
    log.info("%s: test MAP@R clean %.4f, replaced %.4f +- %.4f (relative drop %.1f %%)", name, clean, replaced,
             result["replaced"]["map_at_r"]["std"], 100 * (1 - replaced / clean) if clean else 0.0)
    return result


def flat_test_metrics(result: dict, prefix: str = "test") -> dict[str, float]:
    """The same names for both modes, so MLflow's compare view lines base and bgaugment up."""
    flat = {f"{prefix}_clean_{m}": result["clean"][m] for m in METRICS}
    for condition in ("replaced", "mixed_same", "mixed_rand"):  # drawn: mean and std over the draws
        for m in METRICS if condition in result else ():
            flat[f"{prefix}_{condition}_{m}"] = result[condition][m]["mean"]
            flat[f"{prefix}_{condition}_{m}_std"] = result[condition][m]["std"]
    for condition in ("only_fg", "only_bg"):
        flat.update({f"{prefix}_{condition}_{m}": result[condition][m] for m in METRICS if condition in result})
    if "bg_gap" in result:
        flat[f"{prefix}_bg_gap_map_at_r"] = result["bg_gap"]["map_at_r"]["mean"]
        flat[f"{prefix}_bg_gap_map_at_r_std"] = result["bg_gap"]["map_at_r"]["std"]
    if "worst_of_k" in result:
        flat[f"{prefix}_worst_of_k_map_at_r"] = result["worst_of_k"]["map_at_r"]
    return flat
