"""The training input one batch ahead on a thread (engine/train_input.py): same batches, in
order, as without; errors reach the training loop; an early stop leaves no thread behind."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from bgbias.core.config import load_params
from bgbias.engine import train
from bgbias.engine.device import DeviceSetup
from bgbias.engine.train import fit
from bgbias.engine.train_input import device_batches
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout
from tests.conftest import write_params

CPU = DeviceSetup(torch.device("cpu"), 0)


def _loader(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise BgbiasError(f"image {i}: cannot be read")
        yield torch.full((2, 3), float(i)), torch.tensor([i, i]), None


def _noisy(generator):
    """A to_device that draws from its generator, as crops and BGAugment do."""
    return lambda batch, labels, _: (batch + torch.rand(batch.shape, generator=generator), labels)


def test_overlapped_batches_equal_the_inline_ones_in_order():
    inline = list(device_batches(_loader(7), _noisy(torch.Generator().manual_seed(3)), CPU, overlap=False))
    ahead = list(device_batches(_loader(7), _noisy(torch.Generator().manual_seed(3)), CPU, overlap=True))
    assert len(ahead) == 7 and [int(labels[0]) for _, labels in ahead] == list(range(7))
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(inline, ahead))


def test_a_loader_error_reaches_the_training_loop_after_the_batches_before_it():
    seen = []
    with pytest.raises(BgbiasError, match="image 3: cannot be read"):
        for _, labels in device_batches(_loader(6, fail_at=3), lambda b, l, _: (b, l), CPU, overlap=True):
            seen.append(int(labels[0]))
    assert seen == [0, 1, 2]


def test_stopping_early_ends_the_input_thread():
    before = threading.active_count()
    batches = device_batches(_loader(100), lambda b, l, _: (b, l), CPU, overlap=True)
    next(batches)
    batches.close()  # the training loop left (an exception, early stopping)
    assert threading.active_count() == before


@pytest.mark.parametrize("prepared", [False, True])
def test_training_with_the_input_ahead_equals_training_without(tiny_project, monkeypatch, prepared):
    # What CUDA does by default (overlap_input), forced on the CPU: the same run bit for bit.
    def history(overlap):
        monkeypatch.setattr(train, "device_setup",
                            lambda *a, **k: dataclasses.replace(CPU, overlap_input=overlap))
        params = load_params(write_params(tiny_project, {"train": {"epochs": 2}, "prepare": {"enabled": prepared}}))
        if prepared:
            from bgbias import stages

            stages.prepare(params, Layout(tiny_project))
        fit(params, Layout(tiny_project), "bgaugment", progress=False)
        state = torch.load(tiny_project / "outputs" / "train" / "synthetic" / "bgaugment" / "last.pt",
                           weights_only=True)
        return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in state["history"]]

    assert history(True) == history(False)


def test_embedding_passes_with_the_input_ahead_equal_the_inline_ones():
    # Evaluation's embed_heads makes its input (background swaps included) the same way.
    from bgbias.data.bgaugment import BackgroundPool
    from bgbias.engine.embed import embed_heads

    rng = torch.Generator().manual_seed(0)
    pool = BackgroundPool(torch.rand(3, 3, 16, 16, generator=rng))
    order = torch.randperm(12, generator=rng)  # the loader's order is not the dataset's
    loader = [((torch.rand(4, 4, 12, 12, generator=rng) * 255).to(torch.uint8), order[i:i + 4] % 3, order[i:i + 4])
              for i in range(0, 12, 4)]
    draws = pool.draw(12, torch.Generator().manual_seed(1))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def run(overlap):
        return embed_heads(model, loader, dataclasses.replace(CPU, overlap_input=overlap), pool, draws, progress=False)

    (inline, labels), (ahead, labels_ahead) = run(False), run(True)
    assert inline["embedding"].shape == (12, 5) and (labels == labels_ahead).all()
    assert (inline["embedding"] == ahead["embedding"]).all()
