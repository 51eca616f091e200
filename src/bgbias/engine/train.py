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

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from bgbias import loss_params
from bgbias.config import MODES, Params
from bgbias.data.bgaugment import BackgroundDraw, BackgroundPool, replace_backgrounds
from bgbias.data.datasets import DatasetIndex
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.data.sampler import MPerClassBatchSampler
from bgbias.data.transforms import eval_transform, split_batch, train_transform
from bgbias.engine.checkpoint import load_checkpoint, save_checkpoint
from bgbias.engine.device import DeviceSetup, device_setup
from bgbias.engine.distributed import Distributed, init_distributed
from bgbias.engine.evaluate import embed, retrieval_metrics
from bgbias.engine.seeds import VAL_DRAWS, derived_seed
from bgbias.errors import BgbiasError
from bgbias.files import write_json
from bgbias.layout import Layout
from bgbias.losses import create_loss
from bgbias.models import create_model
from bgbias.tracking import NullTracker, Tracker, context_tags

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


def prepare_batch(batch: torch.Tensor, labels: torch.Tensor, setup: DeviceSetup, pool: BackgroundPool | None,
                  generator: torch.Generator, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, 4, H, W] from the loader -> float images [B, 3, H, W] on the device, with
    BGAugment (background replaced with probability p) when a pool is given."""
    images, masks = split_batch(batch.to(setup.device, non_blocking=True))  # [B, 3, H, W], [B, 1, H, W]
    if pool is not None:
        draw = pool.draw(len(images), generator)
        apply = torch.rand(len(images), generator=generator) < p
        images = replace_backgrounds(images, masks, pool, draw, apply)
    return images, labels.to(setup.device, non_blocking=True)


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
    if params.loss_params.source != "tuned":
        return None
    path = layout.tuned_params(params.dataset, params.loss)
    if not path.is_file():
        raise BgbiasError(f"loss_params.source is 'tuned' but {path} does not exist "
                          f"(run `bgbias tune --loss {params.loss}` or `dvc repro pipelines/tune/dvc.yaml`)")
    return {k: float(v) for k, v in yaml.safe_load(path.read_text())["loss_params"].items()}


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
    }


def _fingerprint(config: dict, index_csv: Path) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(index_csv.read_bytes())
    return digest.hexdigest()


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
    on_epoch: Callable[[int, dict[str, float]], None] | None = None


def fit(params: Params, layout: Layout, mode: str, tracker: Tracker | None = None, resume: bool = False,
        progress: bool = True, target: RunTarget | None = None) -> dict:
    if mode not in MODES:
        raise BgbiasError(f"unknown mode '{mode}'; allowed: {', '.join(MODES)}")
    cfg = params.train
    tracker = tracker or NullTracker()
    setup = device_setup(cfg.device, cfg.workers, int(os.environ.get("LOCAL_RANK", "0")))
    ddp = init_distributed(setup.cuda)
    try:
        return _fit(params, layout, mode, tracker, resume, progress and ddp.is_main, setup, ddp,
                    target or RunTarget())
    finally:
        ddp.close()


def _fit(params: Params, layout: Layout, mode: str, tracker: Tracker, resume: bool, progress: bool,
         setup: DeviceSetup, ddp: Distributed, target: RunTarget) -> dict:
    cfg = params.train
    config = run_config(params, mode, layout)
    index_csv = layout.index_csv(params.dataset)
    index = DatasetIndex.read(index_csv, params.selected.root)
    masks_dir = layout.masks(params.dataset)
    train_set = MaskedImageDataset(index.split("train"), index.root, masks_dir, train_transform(cfg))
    val_set = MaskedImageDataset(index.split("val"), index.root, masks_dir, eval_transform(cfg))
    for name, split in (("train", train_set), ("val", val_set)):
        if split.num_classes < 2:
            raise BgbiasError(f"dataset '{params.dataset}': the {name} split has {split.num_classes} class(es); "
                              "training needs at least 2 (check datasets.*.class_split)")

    # Model, loss and optimizer; the embedding layer's init is seeded.
    torch.manual_seed(params.seed)
    model = create_model(params.model, params.assets_dir).to(setup.device, memory_format=torch.channels_last)
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
    val_draws = pool.draw(len(val_set), torch.Generator().manual_seed(derived_seed(params.seed, VAL_DRAWS)))
    val_loader = DataLoader(val_set, batch_size=cfg.eval_batch_size, shuffle=False, **setup.loader_options())

    out_dir = target.out_dir or layout.train_dir(params.dataset, mode)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    fingerprint = _fingerprint(config, index_csv)
    state = _resumable_state(last_path, fingerprint) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        loss.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        log.info("%s: resuming after epoch %d (best val %.4f at epoch %d)", mode, state["epoch"],
                 state["best_metric"], state["best_epoch"])
    else:
        state = {"epoch": 0, "best_metric": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [],
                 "seconds": 0.0, "run_id": None}
        if ddp.is_main:
            best_path.unlink(missing_ok=True)  # a best.pt of an older run must not survive this one

    selection = "val_map_at_r" if mode == "base" else "val_replaced_map_at_r"
    if ddp.is_main:
        data = {"train_images": len(train_set), "train_classes": train_set.num_classes,
                "val_images": len(val_set), "val_classes": val_set.num_classes, "world_size": ddp.world_size,
                "device": str(setup.device), "m_per_class": m, "selection_metric": selection}
        tags = {**target.tags, "mode": mode, "dataset": params.dataset, "loss": params.loss,
                "backbone": params.model.backbone,
                **context_tags(layout.root)}
        state["run_id"] = tracker.start(target.experiment or params.dataset, target.run_name or f"{mode}-{params.loss}",
                                        {**config, "data": data}, tags,
                                        resume_run_id=state["run_id"])
    log.info("%s: %d train images (%d classes), %d val images; %d epochs x %d iterations of %d on %s",
             mode, len(train_set), train_set.num_classes, len(val_set), cfg.epochs, cfg.iterations_per_epoch,
             cfg.batch_size, setup.device)

    stopped_early = False
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        start = time.perf_counter()
        epoch_seed = derived_seed(params.seed, epoch, ddp.rank)
        torch.manual_seed(epoch_seed)  # crops and flips (in-process loading)
        sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(epoch_seed),
                            **setup.loader_options())
        augment = torch.Generator().manual_seed(epoch_seed)
        step.train()
        total = torch.zeros((), device=setup.device)
        bar = tqdm(loader, desc=f"{mode} epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
        for batch, labels, _ in bar:
            images, labels = prepare_batch(batch, labels, setup, pool if mode == "bgaugment" else None,
                                           augment, cfg.bgaugment_p)
            total += optimise(step, optimizer, images, labels, setup)
        train_loss = ddp.mean(total.item() / len(sampler))

        stop = False
        if ddp.is_main:
            metrics = {"train_loss": train_loss, **_validate(model, val_loader, setup, pool, val_draws, progress),
                       "lr": optimizer.param_groups[0]["lr"]}
            state["seconds"] += time.perf_counter() - start
            metrics["epoch_seconds"] = time.perf_counter() - start
            state["history"].append({"epoch": epoch, **metrics})
            improved = metrics[selection] > state["best_metric"]
            if improved:
                state.update(best_metric=metrics[selection], best_epoch=epoch, bad_epochs=0)
                save_checkpoint(best_path, {"model": model.state_dict(), "loss": loss.state_dict(), "epoch": epoch,
                                            "metric": metrics[selection], "selection": selection,
                                            "config": json.dumps(config)})
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            stop = state["bad_epochs"] >= cfg.patience
            save_checkpoint(last_path, _last_state(state, model, loss, optimizer, fingerprint, finished=False))
            tracker.log_metrics(metrics, step=epoch)
            if target.on_epoch is not None:
                target.on_epoch(epoch, metrics)  # may raise (a pruned tuning trial): last.pt is saved
            log.info("%s epoch %d: loss %.4f, val MAP@R %.4f, replaced %.4f%s", mode, epoch, train_loss,
                     metrics["val_map_at_r"], metrics["val_replaced_map_at_r"], " *" if improved else "")
        stopped_early = ddp.broadcast_flag(stop)
        if stopped_early:
            break

    result = {}
    if ddp.is_main:
        result = _finish(state, mode, params, target.report or layout.train_report(mode), selection, stopped_early,
                         tracker, best_path)
        save_checkpoint(last_path, _last_state(state, model, loss, optimizer, fingerprint, finished=True))
    ddp.barrier()
    return result


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
                fingerprint: str, finished: bool) -> dict:
    return {**state, "model": model.state_dict(), "loss": loss.state_dict(), "optimizer": optimizer.state_dict(),
            "fingerprint": fingerprint, "finished": finished}


def _finish(state: dict, mode: str, params: Params, report_path: Path, selection: str, stopped_early: bool,
            tracker: Tracker, best_path: Path) -> dict:
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
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
    write_json(report_path, result)
    tracker.log_metrics({f"best_{k}": v for k, v in best.items() if k.startswith("val_")}, step=state["best_epoch"])
    tracker.log_artifact(best_path, "checkpoints")
    tracker.finish()
    return result
