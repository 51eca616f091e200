"""The CUDA paths against their CPU references (issue 16): skipped without a CUDA device.

Run on a GPU machine with `pytest -m gpu` (benchmarks/gpu_checks.sh does)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bgbias.core.config import MasksConfig
from bgbias.data.device_crops import random_resized_crops
from bgbias.masks.quality import iou_and_overlap
from bgbias.masks.compute import MaskJob, U2netpMasker
from bgbias.masks.torch_engine import TorchMasker, masks_on_device, run_batched
from bgbias.masks.resample import resize_lanczos
from tests.conftest import object_image

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("shape,size", [((3, 227, 227), (320, 320)), ((3, 375, 500), (320, 320)),
                                        ((1, 320, 320), (500, 375)), ((2, 3, 41, 57), (320, 320))])
def test_lanczos_on_cuda_equals_the_cpu_bit_for_bit(shape, size):
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    assert torch.equal(resize_lanczos(image.cuda(), size).cpu(), resize_lanczos(image, size))


class FirstChannel:
    """A stand-in network (its output is its input's first channel): pre/post-processing only."""

    def __init__(self, device: str):
        self.device = torch.device(device)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, :1] * 2.0


def test_device_pre_and_post_processing_on_cuda_equal_the_cpus():
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in
              ((227, 227), (300, 200), (227, 227))]
    on_cpu = masks_on_device(FirstChannel("cpu"), images)
    on_cuda = masks_on_device(FirstChannel("cuda"), [image.cuda() for image in images])
    for a, b in zip(on_cpu, on_cuda):
        np.testing.assert_array_equal(a, b)


def test_cuda_masks_with_the_defaults_are_onnxruntimes(tmp_path, assets_dir):
    # The whole CUDA path with the default settings (Pillow decoding on threads, LANCZOS on
    # the device, u2netp in fp32 with TF32 off): onnxruntime's masks up to float summation
    # order. (bf16 and fp16/nvJPEG move masks a lot: benchmarks/masks_precision.py.)
    jobs = []
    for seed, size in enumerate((96, 160, 227, 300)):
        png = object_image(tmp_path / "png" / f"{seed}.png", size=size, seed=seed)
        jpeg = tmp_path / "in" / f"{seed}.jpg"
        jpeg.parent.mkdir(exist_ok=True)
        Image.open(png).save(jpeg, quality=95)
        jobs += [MaskJob(path, tmp_path / "out" / f"{path.parent.name}_{seed}.png") for path in (png, jpeg)]
    defaults = MasksConfig()
    masker = TorchMasker(assets_dir / "u2netp.onnx", "cuda", precision=defaults.precision, decoder=defaults.decoder)
    assert all(error is None for _, error in run_batched(jobs, masker, batch_size=3))
    ort = U2netpMasker(assets_dir / "u2netp.onnx", threads=1)
    ious = [iou_and_overlap(np.asarray(Image.open(job.mask)), np.asarray(ort.predict(Image.open(job.image).convert("RGB"))))[0]
            for job in jobs]
    print("IoU per image:", " ".join(f"{iou:.4f}" for iou in ious))
    assert min(ious) >= 0.999


def test_device_crops_on_cuda_equal_the_cpus():
    rng = np.random.default_rng(2)
    padded = torch.from_numpy(rng.integers(0, 256, (4, 4, 300, 340), dtype=np.uint8))
    sizes = torch.tensor([[300, 340], [256, 300], [280, 256], [256, 256]])
    args = (227, (0.16, 1.0), (0.75, 4 / 3))
    on_cpu = random_resized_crops(padded, sizes, *args, torch.Generator().manual_seed(0))
    on_cuda = random_resized_crops(padded.cuda(), sizes, *args, torch.Generator().manual_seed(0)).cpu()
    assert (on_cpu - on_cuda).abs().max() <= 1e-3


def test_training_input_ahead_on_a_side_stream_equals_inline():
    # train_input.device_batches on CUDA: crops + BGAugment on a side stream, on a thread;
    # the model's stream gets the same batches as when they are made inline.
    from bgbias.data.bgaugment import BackgroundPool
    from bgbias.engine.device import DeviceSetup
    from bgbias.engine.train_input import TrainInput, device_batches

    setup = DeviceSetup(torch.device("cuda"), 0, overlap_input=True)
    rng = np.random.default_rng(0)
    pool = BackgroundPool(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)).cuda())
    loader = [((torch.from_numpy(rng.integers(0, 256, (8, 4, 80, 96), dtype=np.uint8)),
                torch.tensor([[80, 96]] * 4 + [[60, 70]] * 4)), torch.arange(8), None) for _ in range(6)]

    def batches(overlap):
        to_device = TrainInput(setup, torch.Generator().manual_seed(2), pool, 0.5, True, 48, (0.16, 1.0), (0.75, 4 / 3))
        return [(images.sum(0).cpu(), labels.cpu()) for images, labels in device_batches(loader, to_device, setup,
                                                                                             overlap)]

    for (a, la), (b, lb) in zip(batches(False), batches(True), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_embedding_passes_on_cuda_with_the_input_ahead_equal_the_inline_ones():
    from bgbias.data.bgaugment import BackgroundPool
    from bgbias.engine.device import DeviceSetup
    from bgbias.engine.embed import embed_heads

    rng = torch.Generator().manual_seed(0)
    pool = BackgroundPool(torch.rand(3, 3, 16, 16, generator=rng).cuda())
    loader = [((torch.rand(8, 4, 24, 24, generator=rng) * 255).to(torch.uint8), torch.arange(8) % 3,
               torch.arange(i, i + 8)) for i in range(0, 48, 8)]
    draws = pool.draw(48, torch.Generator().manual_seed(1))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).cuda()

    def run(overlap):
        setup = DeviceSetup(torch.device("cuda"), 0, overlap_input=overlap)
        return embed_heads(model, loader, setup, pool, draws, progress=False)[0]["embedding"]

    assert (run(False) == run(True)).all()
