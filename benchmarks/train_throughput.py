"""Training throughput: the full step (data loading + BGAugment + forward/backward/update)
against the model-only step (forward/backward/update on one batch already on the device),
in images/s, and their ratio (goal on GPU: >= 0.95, i.e. the input pipeline is hidden).

Full step, two inputs: today's (decode JPEG/PNG + mask, RandomResizedCrop + flip on loader
workers) and, with `--prepared`, the decode-free store (data/prepared.py: built first in
a temporary folder at the benchmark's resize, its build time printed; batches cropped and
flipped on the device); each with the input work inline and one batch ahead on a thread
(engine/train_input.py: what training does on CUDA).

Uses the project's data (run `dvc repro masks backgrounds` first) and the params file's
training settings, overridden by the options below. BN-Inception runs with random
weights here (only its speed matters).

    python benchmarks/train_throughput.py --backbone efficientnet_lite0 --crop 227 --batch 32 --prepared
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bgbias.core.config import load_params
from bgbias.data.bgaugment import BackgroundPool
from bgbias.data.datasets import DatasetIndex
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.data.prepared import PreparedImageDataset, pad_collate, prepare
from bgbias.data.sampler import MPerClassBatchSampler
from bgbias.data.transforms import train_transform
from bgbias.engine.device import device_setup
from bgbias.engine.train import TrainStep, optimise
from bgbias.engine.train_input import TrainInput, device_batches
from bgbias.core.layout import Layout
from bgbias.losses.registry import create_loss
from bgbias.core.loss_params import resolve
from bgbias.models import Embedder, create_model
from bgbias.models.backbones import Backbone, BNInceptionInput


def build_model(backbone: str, params) -> torch.nn.Module:
    if backbone == "bninception":
        from bgbias.models.bninception import BNInception

        return Embedder(Backbone(BNInception(), 1024, BNInceptionInput()), params.model.embedding_dim)
    return create_model(params.model.model_copy(update={"backbone": backbone}), params.assets_dir)


def timed(fn, iterations: int, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(iterations)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=("efficientnet_lite0", "bninception"))
    parser.add_argument("--crop", type=int, default=227)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mode", default="bgaugment", choices=("base", "bgaugment"))
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: params)")
    parser.add_argument("--prepared", action="store_true", help="also time the full step on the decode-free store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        run(args, Path(store))


def run(args: argparse.Namespace, store: Path) -> None:
    params = load_params(args.params)
    layout = Layout(Path(args.params).resolve().parent)
    cfg = params.train.model_copy(update={"crop": args.crop, "resize": max(args.crop, params.train.resize),
                                          "batch_size": args.batch})
    setup = device_setup(cfg.device, args.workers if args.workers is not None else cfg.workers)
    index = DatasetIndex.read(layout.index_csv(params.dataset), params.selected.root)
    train_set = MaskedImageDataset(index.split("train"), index.root, layout.masks(params.dataset), train_transform(cfg))
    total_iterations = args.warmup + args.iterations
    sampler = MPerClassBatchSampler(train_set.labels, cfg.m_per_class, args.batch, total_iterations, params.seed)
    pool = BackgroundPool.from_folder(layout.backgrounds / "train", cfg.resize, setup.device)
    pool = pool if args.mode == "bgaugment" else None

    torch.manual_seed(0)
    model = build_model(args.backbone, params).to(setup.device, memory_format=torch.channels_last)
    loss = create_loss(params.loss, resolve(params.loss, params.selected.format), train_set.num_classes,
                       params.model.embedding_dim).loss.to(setup.device)
    step = TrainStep(model, loss).train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    generator = torch.Generator().manual_seed(0)

    def steps(loader, prepared: bool, upto: str, overlap: bool = False) -> float:
        """Seconds for args.iterations steps after a warm-up, each step up to `upto`:
        "loader" (the next batch), "input" (+ to the device, crops, BGAugment) or "train";
        `overlap`: the input one batch ahead on a thread (engine/train_input.py)."""
        if upto == "loader":
            batches = (batch for batch, _, _ in loader)
        else:
            to_device = TrainInput(setup, generator, pool, cfg.bgaugment_p, prepared, cfg.crop, cfg.crop_scale,
                                   cfg.crop_ratio)
            batches = device_batches(loader, to_device, setup, overlap)

        def run(n: int) -> None:
            for _ in range(n):
                item = next(batches)
                if upto == "train":
                    optimise(step, optimizer, *item, setup)

        timed(run, args.warmup, setup.cuda)
        seconds = timed(run, args.iterations, setup.cuda)
        batches.close()
        return seconds

    # Full step: loader -> device -> (crops) -> BGAugment -> forward/backward/update, with the
    # input inline and one batch ahead on a thread; the same without the model ("input") and
    # without anything after the loader ("loader").
    loaders = {"decoding": lambda: DataLoader(train_set, batch_sampler=sampler, **setup.loader_options())}
    build_seconds = None
    if args.prepared:
        start = time.perf_counter()
        prepare(index, layout.masks(params.dataset), store, cfg.resize)
        build_seconds = time.perf_counter() - start
        stored = PreparedImageDataset(index.split("train"), store, "train")
        loaders["prepared"] = lambda: DataLoader(stored, batch_sampler=sampler, collate_fn=pad_collate,
                                                 **setup.loader_options())
    seconds = {(name, upto): steps(make(), name == "prepared", upto)
               for name, make in loaders.items() for upto in ("train", "input", "loader")}
    seconds.update({(name, "ahead"): steps(make(), name == "prepared", "train", overlap=True)
                    for name, make in loaders.items()})

    # Model only: the same kind of batch, already prepared on the device, reused.
    batch, labels, _ = next(iter(DataLoader(train_set, batch_sampler=sampler, num_workers=0)))
    images, labels = TrainInput(setup, generator, pool, cfg.bgaugment_p)(batch, labels)

    def model_only(n: int) -> None:
        for _ in range(n):
            optimise(step, optimizer, images, labels, setup)

    timed(model_only, args.warmup, setup.cuda)
    model_seconds = timed(model_only, args.iterations, setup.cuda)

    # Embedding (evaluation's forward: eval mode, no grad, the training's autocast) of
    # eval_batch_size images: the rate the grid's GPU-hours need beside the train step's.
    eval_images = images[torch.arange(cfg.eval_batch_size, device=images.device) % len(images)]

    @torch.no_grad()
    def embedding_only(n: int) -> None:
        for _ in range(n):
            with setup.autocast():
                model(setup.to_input(eval_images))

    model.eval()
    timed(embedding_only, args.warmup, setup.cuda)
    embed_rate = args.iterations * cfg.eval_batch_size / timed(embedding_only, args.iterations, setup.cuda)
    model.train()

    images_done = args.iterations * args.batch
    model_rate = images_done / model_seconds
    if build_seconds is not None:
        n = len(index.split("train")) + len(index.split("val"))
        print(f"prepare (build the store once): {build_seconds:.1f} s for {n} images at resize {cfg.resize}")
    device = torch.cuda.get_device_name(setup.device) if setup.cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; backbone {args.backbone}, {args.crop} px, batch {args.batch}, mode {args.mode}, "
          f"workers {setup.workers}, {args.iterations} timed iterations")
    for name in loaders:
        rate, ahead = (images_done / seconds[(name, upto)] for upto in ("train", "ahead"))
        print(f"full training step ({name}): {rate:8.1f} images/s  ratio to model-only {rate / model_rate:.3f}"
              f"   (input only {images_done / seconds[(name, 'input')]:.1f}, "
              f"loader only {images_done / seconds[(name, 'loader')]:.1f} images/s)")
        print(f"  input one batch ahead{' (the default on CUDA)' if setup.cuda else ''}: {ahead:8.1f} images/s  "
              f"ratio to model-only {ahead / model_rate:.3f}")
    print(f"model-only step:                {model_rate:8.1f} images/s  (goal on GPU: full >= 0.95 x model-only)")
    print(f"embedding (eval forward, batch {cfg.eval_batch_size}): {embed_rate:8.1f} images/s  "
          "(benchmarks/grid_scaling.py --gpu-embed-ips; --gpu-train-ips: the full step's rate)")


if __name__ == "__main__":
    main()
