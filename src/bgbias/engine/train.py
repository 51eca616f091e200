"""Training, read top to bottom: data, model, loss, optimizer, then epochs of fixed
iterations with validation, early stopping and checkpoints. `fit()` returns its metrics.

Modes: `base` trains on the images as they are and selects the epoch with the best
validation MAP@R; `bgaugment` replaces each training image's background with a crop of
a train-pool photo (with probability `train.bgaugment_p`) and selects on validation
MAP@R with replaced backgrounds. Both modes log both validation conditions.

Every epoch's randomness (batches, crops, background draws) is a function of (seed,
epoch, rank), so `--resume` after a kill replays exactly what the killed run would have
done: at most the unfinished epoch is lost, and on CPU the metrics are identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from bgbias.core import loss_params
from bgbias.core.config import MODES, Params, TrainConfig
from bgbias.data.bgaugment import BackgroundDraw, BackgroundPool
from bgbias.data.datasets import DatasetIndex
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.data.prepared import open_split, pad_collate
from bgbias.data.sampler import MPerClassBatchSampler
from bgbias.data.transforms import eval_transform, train_transform
from bgbias.models.checkpoint import load_checkpoint, recover_best, save_checkpoint, save_epoch
from bgbias.engine.device import DeviceSetup, device_setup
from bgbias.engine.distributed import Distributed, init_distributed
from bgbias.engine.embed import embed, retrieval_metrics
from bgbias.core.seeds import Stream, derived_seed
from bgbias.engine.train_input import TrainInput, device_batches
from bgbias.core.errors import BgbiasError
from bgbias.core.files import refuse_linked, write_json
from bgbias.data.inputs import training_inputs
from bgbias.core.layout import Layout
from bgbias.tracking.lineage import training_input
from bgbias.losses.registry import create_loss
from bgbias.models import Embedder, initial_model
from bgbias.tracking.mlflow import NullTracker, Tracker, context_tags
from bgbias.losses.tuned import apply_tuned_lr, read_tuned

log = logging.getLogger(__name__)

class TrainStep(nn.Module):
    """Model + loss in one module, so DDP also averages the gradients of loss proxies."""

    def __init__(self, model: nn.Module, loss: nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = self.model(images)  # [B, dim]
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.loss(embeddings.float(), labels)  # losses in fp32 under bf16 autocast


def optimise(step: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
             setup: DeviceSetup) -> torch.Tensor:
    """One forward/backward/update; returns the detached loss (no host sync)."""
    with setup.autocast():
        value = step(setup.to_input(images), labels)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value.detach()


def tuned_values(params: Params, layout: Layout) -> dict[str, float] | None:
    tuned = read_tuned(params, layout)
    return None if tuned is None else tuned["loss_params"]


def run_config(params: Params, mode: str, layout: Layout) -> dict:
    """Everything that defines a training run (logged as MLflow params, fingerprinted for resume)."""
    fmt = params.selected.format
    return {
        "mode": mode,
        "dataset": params.dataset,
        "dataset_format": fmt,
        "loss": params.loss,
        "seed": params.seed,
        "model": params.model.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json"),
        "loss_params": loss_params.resolve(params.loss, fmt, params.loss_params.overrides.get(params.loss),
                                           tuned_values(params, layout)),
        # Only when set: another input path (other crops), and the default config stays as it was.
        **({"prepare": True} if params.prepare.enabled else {}),
    }


def training_fingerprint(params: Params, layout: Layout, mode: str, inputs: dict[str, str] | None = None) -> str:
    """The fingerprint a run of `mode` with these params has (resume, grid cells); `inputs`:
    `training_inputs` when already computed."""
    return _fingerprint(run_config(params, mode, layout), inputs or training_inputs(params, layout))


def _fingerprint(config: dict, inputs: dict[str, str]) -> str:
    """What a resumed run must share with the killed one: the config (tuned values included)
    and the content of every input (index, masks, background pools, backbone weights)."""
    identity = {"config": config, "inputs": inputs}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def served_model(run: Run, params: Params, layout: Layout) -> dict:
    """How `_finish` logs the best model: its registry name, alias (the mode; `<mode>-seedN`
    for a run of the seeds pipeline, so it leaves the default study's aliases alone) and
    input example (the first two validation images as evaluation feeds them, uint8
    [2, crop, crop, 3])."""
    example = np.stack([run.val_set[i][0][:3].permute(1, 2, 0).numpy() for i in range(min(2, len(run.val_set)))])
    alias = run.mode if layout.seed_run is None else f"{run.mode}-seed{layout.seed_run}"
    return {"registered_name": f"bgbias-{params.dataset}-{params.loss}", "alias": alias, "example": example,
            "resize": params.train.resize, "crop": params.train.crop}


def _validate(model: nn.Module, loader: DataLoader, setup: DeviceSetup, pool: BackgroundPool,
              draws: BackgroundDraw, progress: bool) -> dict[str, float]:
    clean = retrieval_metrics(*embed(model, loader, setup, desc="val clean", progress=progress))
    replaced = retrieval_metrics(*embed(model, loader, setup, pool, draws, desc="val replaced", progress=progress))
    return {**{f"val_{k}": v for k, v in clean.items()}, **{f"val_replaced_{k}": v for k, v in replaced.items()}}


@dataclass
class RunTarget:
    """Where a training writes and how it is tracked; the default is the pipeline's
    `outputs/train/<dataset>/<mode>/` and `reports/train/<mode>.json`. Tuning trials
    write elsewhere and report each epoch to their trial."""

    out_dir: Path | None = None
    report: Path | None = None
    run_name: str | None = None
    experiment: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # logged beside the run's config (e.g. a bias-curve point's value)
    register_model: bool = True  # log the best model and register it as bgbias-<dataset>-<loss>@<mode>
    on_epoch: Callable[[int, dict[str, float]], None] | None = None


def fit(params: Params, layout: Layout, mode: str, tracker: Tracker | None = None, resume: bool = False,
        progress: bool = True, target: RunTarget | None = None) -> dict:
    if mode not in MODES:
        raise BgbiasError(f"unknown mode '{mode}'; allowed: {', '.join(MODES)}")
    params = apply_tuned_lr(params, read_tuned(params, layout))  # a tuned lr replaces train.lr
    cfg = params.train
    tracker = tracker or NullTracker()
    setup = device_setup(cfg.device, cfg.workers, int(os.environ.get("LOCAL_RANK", "0")))
    ddp = init_distributed(setup.cuda)
    try:
        return _fit(params, layout, mode, tracker, resume, progress and ddp.is_main, setup, ddp,
                    target or RunTarget())
    finally:
        ddp.close()


@dataclass
class Run:
    """Everything an epoch needs, built once by `_prepare`."""

    mode: str
    model: Embedder
    loss: nn.Module
    step: nn.Module  # model + loss, wrapped in DDP when distributed
    optimizer: torch.optim.Optimizer
    train_set: MaskedImageDataset
    val_set: MaskedImageDataset
    sampler: MPerClassBatchSampler
    val_loader: DataLoader
    pool: BackgroundPool
    val_draws: BackgroundDraw
    config: dict
    selection: str
    m_per_class: int
    prepared: bool = False  # train batches come padded from the store and are cropped on the device


def _splits(params: Params, layout: Layout) -> tuple[MaskedImageDataset, MaskedImageDataset]:
    cfg = params.train
    index = DatasetIndex.read(layout.index_csv(params.dataset), params.selected.root)
    if params.prepare.enabled:  # stored at the shorter side cfg.resize: val only needs its centre crop
        folder = layout.prepared(params.dataset)
        train_set = open_split(folder, index.split("train"), "train", cfg.resize)
        val_set = open_split(folder, index.split("val"), "val", cfg.resize, v2.CenterCrop(cfg.crop))
    else:
        masks_dir = layout.masks(params.dataset)
        train_set = MaskedImageDataset(index.split("train"), index.root, masks_dir, train_transform(cfg))
        val_set = MaskedImageDataset(index.split("val"), index.root, masks_dir, eval_transform(cfg))
    for name, split in (("train", train_set), ("val", val_set)):
        if split.num_classes < 2:
            raise BgbiasError(f"dataset '{params.dataset}': the {name} split has {split.num_classes} class(es); "
                              "training needs at least 2 (check datasets.*.class_split)")
    return train_set, val_set


def _prepare(params: Params, layout: Layout, mode: str, setup: DeviceSetup, ddp: Distributed) -> Run:
    cfg = params.train
    config = run_config(params, mode, layout)
    train_set, val_set = _splits(params, layout)

    model = initial_model(params.model, params.assets_dir, params.seed).to(setup.device,
                                                                          memory_format=torch.channels_last)
    loss_setup = create_loss(params.loss, config["loss_params"], train_set.num_classes, params.model.embedding_dim)
    loss = loss_setup.loss.to(setup.device)
    groups = model.parameter_groups(cfg.lr, cfg.lr_embedding)
    if loss_setup.is_classification:
        groups.append({"params": list(loss.parameters()), "lr": loss_setup.lr_loss, "name": "loss"})
    optimizer = torch.optim.RMSprop(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    step = TrainStep(model, loss)
    if ddp.enabled:
        step = nn.parallel.DistributedDataParallel(step, device_ids=[setup.device.index] if setup.cuda else None)

    if cfg.batch_size % ddp.world_size:
        raise BgbiasError(f"train.batch_size ({cfg.batch_size}) must be divisible by the {ddp.world_size} processes")
    m = 1 if loss_setup.is_classification else cfg.m_per_class
    sampler = MPerClassBatchSampler(train_set.labels, m, cfg.batch_size // ddp.world_size, cfg.iterations_per_epoch,
                                    params.seed, ddp.rank)

    # Train pool: BGAugment's backgrounds and the fixed validation background draws.
    pool = BackgroundPool.from_folder(layout.backgrounds / "train", cfg.resize, setup.device)
    val_draws = pool.draw(len(val_set), torch.Generator().manual_seed(derived_seed(params.seed, Stream.VAL_DRAWS)))
    val_loader = DataLoader(val_set, batch_size=cfg.eval_batch_size, shuffle=False, **setup.loader_options())
    selection = "val_map_at_r" if mode == "base" else "val_replaced_map_at_r"
    return Run(mode, model, loss, step, optimizer, train_set, val_set, sampler, val_loader, pool, val_draws,
               config, selection, m, params.prepare.enabled)


def _fit(params: Params, layout: Layout, mode: str, tracker: Tracker, resume: bool, progress: bool,
         setup: DeviceSetup, ddp: Distributed, target: RunTarget) -> dict:
    cfg = params.train
    out_dir = target.out_dir or layout.train_dir(params.dataset, mode)
    if target.out_dir is None:  # a fresh run deletes the old best.pt: never through a link to elsewhere
        refuse_linked(out_dir, layout.outputs)
    run = _prepare(params, layout, mode, setup, ddp)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    inputs = training_inputs(params, layout)
    fingerprint = _fingerprint(run.config, inputs)
    state = _start_state(run, last_path, best_path, fingerprint, resume, ddp)

    if ddp.is_main:
        _begin(run, params, layout, tracker, target, state, ddp, setup, inputs, progress)
    log.info("%s: %d train images (%d classes), %d val images; %d epochs x %d iterations of %d on %s",
             mode, len(run.train_set), run.train_set.num_classes, len(run.val_set), cfg.epochs,
             cfg.iterations_per_epoch, cfg.batch_size, setup.device)
    stopped_early = _run_epochs(run, params, setup, ddp, state, (last_path, best_path, fingerprint), tracker, target,
                                progress)

    result = {}
    if ddp.is_main:
        if not state.get("finished"):  # no epoch ran (nothing left to train): mark it finished now
            state["finished"] = True
            save_checkpoint(last_path, _last_state(state, run.model, run.loss, run.optimizer, fingerprint))
        served = served_model(run, params, layout) if target.register_model else None
        result = _finish(state, mode, params, target.report or layout.train_report(mode), run.selection,
                         stopped_early, tracker, best_path, served)
    ddp.barrier()
    return result


def _begin(run: Run, params: Params, layout: Layout, tracker: Tracker, target: RunTarget, state: dict,
           ddp: Distributed, setup: DeviceSetup, inputs: dict[str, str], progress: bool) -> None:
    """Rank 0, before the first epoch: the MLflow run (started or resumed), the training's
    dataset input, and epoch 0 (the untrained start, the first point of every curve)."""
    fresh_run = state["run_id"] is None
    _start_tracking(run, params, layout, tracker, target, state, ddp, setup)
    if fresh_run:  # a resumed run saw the same inputs (the fingerprint says so) and has them logged
        tracker.log_dataset(training_input(params, layout, inputs))
    if not state["history"]:
        metrics = _validate(run.model, run.val_loader, setup, run.pool, run.val_draws, progress)
        state["history"].append({"epoch": 0, **metrics})
        tracker.log_metrics(metrics, step=0)
        log.info("%s epoch 0 (untrained): val MAP@R %.4f, replaced %.4f", run.mode, metrics["val_map_at_r"],
                 metrics["val_replaced_map_at_r"])


def _run_epochs(run: Run, params: Params, setup: DeviceSetup, ddp: Distributed, state: dict,
                files: tuple[Path, Path, str], tracker: Tracker, target: RunTarget, progress: bool) -> bool:
    """The epochs left after `state`'s, each trained, validated and committed (`files`: last.pt,
    best.pt and the fingerprint); True when early stopping ended them."""
    last_path, best_path, fingerprint = files
    for epoch in range(state["epoch"] + 1, params.train.epochs + 1):
        start = time.perf_counter()
        train_loss = ddp.mean(_train_epoch(run, params, setup, ddp, epoch, progress))
        stop = False
        if ddp.is_main:
            metrics = {"train_loss": train_loss,
                       **_validate(run.model, run.val_loader, setup, run.pool, run.val_draws, progress),
                       "lr": run.optimizer.param_groups[0]["lr"]}
            stop = _end_epoch(run, state, epoch, metrics, time.perf_counter() - start, params.train, best_path,
                              last_path, fingerprint, tracker, target)
        if ddp.broadcast_flag(stop):
            return True
    return False


def _start_state(run: Run, last_path: Path, best_path: Path, fingerprint: str, resume: bool,
                 ddp: Distributed) -> dict:
    state = _resumable_state(last_path, fingerprint) if resume else None
    if ddp.is_main:  # best.pt must match last.pt: finish or drop a cut-short commit; a fresh run drops it
        recover_best(best_path, None if state is None else state["best_epoch"])
    # Resuming needs the best model so far too: without it (deleted, damaged) start afresh, all ranks alike.
    lost_best = ddp.is_main and state is not None and not _holds_epoch(best_path, state["best_epoch"])
    if ddp.broadcast_flag(lost_best) and state is not None:
        if ddp.is_main:
            log.warning("%s is missing, unreadable or not the best epoch (%d) that %s names: training starts "
                        "from scratch", best_path, state["best_epoch"], last_path)
            recover_best(best_path, None)
        state = None
    if state is not None:
        run.model.load_state_dict(state["model"])
        run.loss.load_state_dict(state["loss"])
        run.optimizer.load_state_dict(state["optimizer"])
        log.info("%s: resuming after epoch %d (best val %.4f at epoch %d)", run.mode, state["epoch"],
                 state["best_metric"], state["best_epoch"])
        return state
    return {"epoch": 0, "best_metric": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [],
            "seconds": 0.0, "run_id": None}


def _start_tracking(run: Run, params: Params, layout: Layout, tracker: Tracker, target: RunTarget, state: dict,
                    ddp: Distributed, setup: DeviceSetup) -> None:
    data = {"train_images": len(run.train_set), "train_classes": run.train_set.num_classes,
            "val_images": len(run.val_set), "val_classes": run.val_set.num_classes, "world_size": ddp.world_size,
            "device": str(setup.device), "m_per_class": run.m_per_class, "selection_metric": run.selection}
    tags = {**target.tags, "mode": run.mode, "dataset": params.dataset, "loss": params.loss,
            "backbone": params.model.backbone, **context_tags(layout.root)}
    state["run_id"] = tracker.start(target.experiment or params.dataset, target.run_name or f"{run.mode}-{params.loss}",
                                    {**run.config, "data": data, **target.params}, tags,
                                    resume_run_id=state["run_id"])


def _train_epoch(run: Run, params: Params, setup: DeviceSetup, ddp: Distributed, epoch: int,
                 progress: bool) -> float:
    """One epoch of `iterations_per_epoch` steps; returns the mean train loss of this rank.
    During the first `warmup_epochs` the backbone is frozen and only the embedding layer
    (and a classification loss's weights) train: a fresh random layer's gradients would
    otherwise pull the pretrained features apart before it has learned anything."""
    cfg = params.train
    epoch_seed = derived_seed(params.seed, Stream.EPOCH, epoch, ddp.rank)
    torch.manual_seed(epoch_seed)  # crops and flips (in-process loading)
    run.sampler.set_epoch(epoch)
    loader = DataLoader(run.train_set, batch_sampler=run.sampler, generator=torch.Generator().manual_seed(epoch_seed),
                        collate_fn=pad_collate if run.prepared else None, **setup.loader_options())
    to_device = TrainInput(setup, torch.Generator().manual_seed(epoch_seed),
                           run.pool if run.mode == "bgaugment" else None, cfg.bgaugment_p, run.prepared, cfg.crop,
                           cfg.crop_scale, cfg.crop_ratio)
    run.model.trunk.requires_grad_(epoch > cfg.warmup_epochs)
    run.step.train()
    total = torch.zeros((), device=setup.device)
    bar = tqdm(total=len(run.sampler), desc=f"{run.mode} epoch {epoch}/{cfg.epochs}", leave=False,
               disable=not progress)
    with bar:
        for images, labels in device_batches(loader, to_device, setup, setup.overlap_input):
            total += optimise(run.step, run.optimizer, images, labels, setup)
            bar.update()
    return total.item() / len(run.sampler)


def _end_epoch(run: Run, state: dict, epoch: int, metrics: dict[str, float], seconds: float, cfg: TrainConfig,
               best_path: Path, last_path: Path, fingerprint: str, tracker: Tracker, target: RunTarget) -> bool:
    """Record an epoch: early-stopping decision, then best.pt and last.pt (with the finished
    flag) in one commit (`save_epoch`), then tracking. True = stop."""
    state["seconds"] += seconds
    metrics["epoch_seconds"] = seconds
    state["history"].append({"epoch": epoch, **metrics})
    improved = metrics[run.selection] > state["best_metric"]
    best = None
    if improved:
        state.update(best_metric=metrics[run.selection], best_epoch=epoch, bad_epochs=0)
        best = {"model": run.model.state_dict(), "loss": run.loss.state_dict(), "epoch": epoch,
                "metric": metrics[run.selection], "selection": run.selection, "config": json.dumps(run.config)}
    else:
        state["bad_epochs"] += 1
    stop = state["bad_epochs"] >= cfg.patience
    state.update(epoch=epoch, finished=stop or epoch >= cfg.epochs)  # a kill after this resumes nothing
    save_epoch(last_path, _last_state(state, run.model, run.loss, run.optimizer, fingerprint), best_path, best)
    tracker.log_metrics(metrics, step=epoch)
    if target.on_epoch is not None:
        target.on_epoch(epoch, metrics)  # may raise (a pruned tuning trial): last.pt is saved
    log.info("%s epoch %d: loss %.4f, val MAP@R %.4f, replaced %.4f%s", run.mode, epoch, metrics["train_loss"],
             metrics["val_map_at_r"], metrics["val_replaced_map_at_r"], " *" if improved else "")
    return stop


def _holds_epoch(best_path: Path, epoch: int) -> bool:
    """best.pt is there, readable and the checkpoint of `epoch` (0: no best yet, nothing to hold)."""
    if epoch == 0:
        return True
    try:
        return load_checkpoint(best_path).get("epoch") == epoch
    except BgbiasError:
        return False


def _resumable_state(last_path: Path, fingerprint: str) -> dict | None:
    if not last_path.is_file():
        log.info("no checkpoint at %s: starting from scratch", last_path)
        return None
    state = load_checkpoint(last_path)
    if state.get("fingerprint") != fingerprint:
        log.warning("%s is from a different configuration or dataset: starting from scratch", last_path)
        return None
    if state.get("finished"):
        log.info("%s is a finished run: training again from scratch", last_path)
        return None
    return state


def _last_state(state: dict, model: nn.Module, loss: nn.Module, optimizer: torch.optim.Optimizer,
                fingerprint: str) -> dict:
    return {**state, "model": model.state_dict(), "loss": loss.state_dict(), "optimizer": optimizer.state_dict(),
            "fingerprint": fingerprint}


def _finish(state: dict, mode: str, params: Params, report_path: Path, selection: str, stopped_early: bool,
            tracker: Tracker, best_path: Path, served: dict | None = None) -> dict:
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    untrained = next((h for h in state["history"] if h["epoch"] == 0), None)
    result = {
        "mode": mode,
        "dataset": params.dataset,
        "loss": params.loss,
        "backbone": params.model.backbone,
        "selection_metric": selection,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": stopped_early,
        "train_seconds": round(state["seconds"], 1),
        "processes": int(torch.distributed.get_world_size()) if torch.distributed.is_initialized() else 1,
        **{k: v for k, v in best.items() if k.startswith("val_")},
    }
    if untrained is not None:  # runs resumed from a checkpoint older than epoch-0 validation lack it
        result.update({f"epoch0_{k}": v for k, v in untrained.items() if k.startswith("val_")})
        result["beats_epoch0"] = best[selection] > untrained[selection]
        tracker.set_tags({"beats_epoch0": str(result["beats_epoch0"]).lower()})
        if not result["beats_epoch0"]:
            log.warning("%s: training did not beat its untrained start: best %s %.4f (epoch %d) <= %.4f at epoch 0",
                        mode, selection, best[selection], state["best_epoch"], untrained[selection])
    write_json(report_path, result)
    tracker.log_metrics({f"best_{k}": v for k, v in best.items() if k.startswith("val_")}, step=state["best_epoch"])
    tracker.log_artifact(best_path, "checkpoints")
    if served is not None:  # best.pt is final here: training has ended
        tracker.log_model(best_path, **served)
    tracker.finish()
    return result
