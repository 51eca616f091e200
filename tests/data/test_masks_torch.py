"""The torch u2netp gives onnxruntime's masks (fp32 on the CPU), and the torch backend
keeps the masks contracts of data/masks.py (record with the model's hash, failures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bgbias.masks.compute import (SOURCE_HASHES, MaskJob, U2netpMasker, compute_masks, folder_jobs, postprocess,
                               preprocess, resolve_engine)
from bgbias.masks import torch_engine as masks_torch
from bgbias.masks.quality import iou_and_overlap
from bgbias.masks.torch_engine import TorchMasker, masks_on_device, postprocess_tensor, preprocess_tensor, run_batched
from bgbias.core.errors import BgbiasError
from tests.conftest import REPO, object_image


def compare_engines(images: list[Image.Image], model_path, batch_size: int = 2) -> list[tuple[float, float]]:
    """(max abs difference of the probability maps, IoU at 128 of the masks) per image."""
    ort, masker = U2netpMasker(model_path, threads=1), TorchMasker(model_path, "cpu")
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = np.concatenate([preprocess(image) for image in chunk])
        ours = masker.infer(torch.from_numpy(batch)).numpy()
        for image, x, pred in zip(chunk, batch, ours):
            theirs = ort.infer(x[None])
            diff = float(np.abs(pred[None] - theirs).max())
            iou = iou_and_overlap(np.asarray(postprocess(pred[None], image.size)),
                                  np.asarray(postprocess(theirs, image.size)))[0]
            results.append((diff, iou))
    return results


def test_torch_u2netp_equals_onnxruntime_on_cpu(tmp_path, assets_dir):
    images = [Image.open(object_image(tmp_path / f"{seed}.png", size=size, seed=seed)).convert("RGB")
              for seed, size in ((0, 48), (1, 64), (2, 33))]
    images.append(Image.fromarray(np.asarray(images[1])[:, :40]))  # not square
    for diff, iou in compare_engines(images, assets_dir / "u2netp.onnx"):
        assert diff <= 1e-4 and iou >= 0.999


def test_device_pre_and_post_processing_equal_pillows(tmp_path):
    # The CUDA path's tensor versions of rembg's steps, run here on the CPU: the same bytes/floats.
    image = Image.open(object_image(tmp_path / "a.png", size=57, seed=4)).convert("RGB")
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    np.testing.assert_array_equal(preprocess_tensor(chw[None])[0].numpy(), preprocess(image)[0])
    prediction = np.random.default_rng(0).random((1, 1, 320, 320), dtype=np.float32)
    np.testing.assert_array_equal(postprocess_tensor(torch.from_numpy(prediction), (57, 41))[0].numpy(),
                                  np.asarray(postprocess(prediction, (57, 41))))


class FirstChannel:
    """A stand-in network whose output is a known function of its input (its first channel)."""
    device = torch.device("cpu")

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, :1] * 2.0


@pytest.mark.parametrize("group_pixels", [1 << 26, 2 * 57 * 57 - 1])  # one group per size; the 57 px ones split
def test_a_batch_of_mixed_sizes_gives_each_image_its_own_mask(tmp_path, monkeypatch, group_pixels):
    # Images are resized in groups of one size (split to bound device memory) and scattered
    # back: each mask must be the one Pillow's per-image path gives for that image, in order.
    monkeypatch.setattr(masks_torch, "GROUP_PIXELS", group_pixels)
    sizes = ((57, 57), (40, 30), (57, 57), (23, 64), (57, 57))
    images = [Image.open(object_image(tmp_path / f"{i}.png", size=57, seed=i)).convert("RGB").resize(size)
              for i, size in enumerate(sizes)]
    masks = masks_on_device(FirstChannel(), [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    for image, mask in zip(images, masks):
        x = preprocess(image)
        expected = np.asarray(postprocess(x[:, :1] * np.float32(2.0), image.size))
        np.testing.assert_array_equal(mask, expected)


def test_torch_backend_keeps_the_masks_contracts(tmp_path, assets_dir):
    for i, size in enumerate((40, 33, 48)):
        object_image(tmp_path / "in" / "sub" / f"{i}.png", size=size, seed=i)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    jobs, model = folder_jobs(tmp_path / "in", tmp_path / "out"), assets_dir / "u2netp.onnx"
    report = compute_masks(jobs, tmp_path / "out", model, progress=False, backend="torch", device="cpu",
                           batch_size=2)
    assert report.written == 3 and [f["image"].rsplit("/", 1)[-1] for f in report.failed] == ["broken.jpg"]
    record = json.loads((tmp_path / "out" / SOURCE_HASHES).read_text())
    assert sorted(record["sources"]) == ["sub/0.png", "sub/1.png", "sub/2.png"] and len(record["model_sha256"]) == 64
    again = compute_masks(jobs, tmp_path / "out", model, progress=False, backend="onnxruntime", batch_size=2)
    assert (again.written, again.existing) == (0, 3)  # same model: the other engine reuses them
    for i, size in enumerate((40, 33, 48)):
        mask = Image.open(tmp_path / "out" / "sub" / f"{i}.png")
        assert mask.mode == "L" and mask.size == (size, size)
        assert np.asarray(mask)[size // 2, size // 2] > 128 and np.asarray(mask)[1, 1] < 128  # the disc


def test_device_path_on_cpu_gives_the_masks(tmp_path, assets_dir):
    # The GPU code path (files read on threads; JPEG decoding by torchvision, LANCZOS and
    # post-processing as tensors), run on the CPU. The PNG decodes with Pillow, as on the GPU,
    # so its mask is the Pillow path's; the JPEG's decoder is torchvision's (libjpeg-turbo on
    # the CPU, nvJPEG on CUDA), whose pixels may differ from Pillow's by a level.
    png = object_image(tmp_path / "in" / "0.png", size=36, seed=0)
    jpeg = tmp_path / "in" / "1.jpg"
    Image.open(object_image(tmp_path / "1.png", size=41, seed=1)).save(jpeg, quality=95)
    broken = tmp_path / "in" / "2.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    jobs = [MaskJob(path, tmp_path / "out" / f"{path.stem}.png") for path in (png, jpeg, broken)]
    masker = TorchMasker(assets_dir / "u2netp.onnx", "cpu", device_ops=True)
    results = {job.image.name: error for job, error in run_batched(jobs, masker, batch_size=3)}
    assert results["0.png"] is None and results["1.jpg"] is None
    assert results["2.jpg"] is not None and not (tmp_path / "out" / "2.png").exists()
    ort = U2netpMasker(assets_dir / "u2netp.onnx", threads=1)
    for job, least in ((jobs[0], 0.999), (jobs[1], 0.99)):
        expected = np.asarray(ort.predict(Image.open(job.image).convert("RGB")))
        assert iou_and_overlap(np.asarray(Image.open(job.mask)), expected)[0] >= least


CUB_IMAGES = REPO.parent / "shared" / "datasets" / "cub200-subset" / "CUB_200_2011" / "images"
HAND_MASKS = REPO / "benchmarks" / "hand_masks" / "cub200-subset" / "masks"


@pytest.mark.slow
def test_torch_equals_onnxruntime_on_the_hand_labelled_cub_photos(assets_dir):
    if not CUB_IMAGES.is_dir():
        pytest.skip(f"{CUB_IMAGES} not found (the CUB subset beside the repo)")
    names = sorted(p.relative_to(HAND_MASKS).with_suffix(".jpg") for p in HAND_MASKS.rglob("*.png"))
    assert len(names) == 6
    images = [Image.open(CUB_IMAGES / name).convert("RGB") for name in names]
    results = compare_engines(images, assets_dir / "u2netp.onnx", batch_size=3)
    print("\n".join(f"{name}: max |diff| {diff:.2e}, IoU@128 {iou:.5f}" for name, (diff, iou) in zip(names, results)))
    for diff, iou in results:
        assert diff <= 1e-4 and iou >= 0.999


def test_engine_choice():
    assert resolve_engine("onnxruntime", None) == ("onnxruntime", "cpu")
    assert resolve_engine("torch", "cpu") == ("torch", "cpu")
    cuda = torch.cuda.is_available()
    assert resolve_engine("auto", None) == (("torch", "cuda") if cuda else ("onnxruntime", "cpu"))
    if cuda:
        with pytest.raises(BgbiasError, match="onnxruntime backend runs on the CPU"):
            resolve_engine("onnxruntime", "cuda")
    else:
        with pytest.raises(BgbiasError, match="no CUDA device"):
            resolve_engine("torch", "cuda")


class StandInMasker(FirstChannel):
    """FirstChannel as run_batched's masker on the device path (on the CPU); `fail_on`: the
    call number (1-based) whose inference raises, as a device error would."""

    device_ops, decoder = True, "pillow"

    def __init__(self, fail_on=None):
        super().__init__()
        self.calls, self.fail_on = 0, fail_on

    def infer(self, batch):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("device lost")
        return super().infer(batch)


def test_batches_queued_one_ahead_give_every_image_its_mask_once(tmp_path):
    # run_batched queues batch k+1 before it waits for batch k: 7 images in batches of 2,
    # every mask the per-image Pillow path's; a batch whose inference fails is reported
    # for its images only, and the run goes on.
    paths = [object_image(tmp_path / "in" / f"{i}.png", size=30 + 3 * i, seed=i) for i in range(7)]
    jobs = [MaskJob(path, tmp_path / "out" / f"{path.stem}.png") for path in paths]
    results = list(run_batched(jobs, StandInMasker(fail_on=2), batch_size=2))
    assert sorted(job.image.name for job, _ in results) == sorted(p.name for p in paths)
    errors = {job.image.name: error for job, error in results}
    assert errors["2.png"] == errors["3.png"] == "RuntimeError: device lost"
    for i in (0, 1, 4, 5, 6):
        assert errors[f"{i}.png"] is None
        image = Image.open(paths[i]).convert("RGB")
        expected = np.asarray(postprocess(preprocess(image)[:, :1] * np.float32(2.0), image.size))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{i}.png")), expected)
    assert not (tmp_path / "out" / "2.png").exists() and not (tmp_path / "out" / "3.png").exists()
