"""Malicious and truncated checkpoints and weights files: refused in one line naming the
file, no code run (the pickled payload would create a file), never torch's advice to load
with weights_only=False."""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import write_params
from tests.reliability.conftest import VICTIM_BYTES, Probe, assert_only_changed, assert_refused


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}, "config": "{}", "x": Payload(marker)}, path)


def truncated(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    path.write_bytes(path.read_bytes()[:300])


def not_a_dict(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.zeros(3), path)


@pytest.fixture
def trained_probe(tiny_project) -> Probe:
    """The tiny project (index, masks, backgrounds) as a probe tree, with outside/ beside it."""
    probe = Probe(tiny_project.parent)
    probe.outside.mkdir()
    probe.victim.write_bytes(VICTIM_BYTES)
    return probe


TRAIN = "outputs/train/synthetic"
LOCK = f"project/{TRAIN}/.base.lock"  # the trainer's lock on its folder, beside it

EVALUATE = ["evaluate", "--no-track"]
RESUME = ["train", "--mode", "base", "--resume", "--no-track"]
TRAIN_CMD = ["train", "--mode", "base", "--no-track"]
RESNET = {"model": {"backbone": "resnet50", "weights": "weights.pth"}}
BNINCEPTION = {"model": {"backbone": "bninception", "weights": "weights.pth"}}
EVAL_OUT = ["project/outputs/eval"]

CASES = [
    # (what is planted where, command, params overrides, error fragments, folders the command may write)
    (malicious, "best.pt", EVALUATE, {}, ["checkpoint", "best.pt", "refused"], EVAL_OUT),
    (truncated, "best.pt", EVALUATE, {}, ["checkpoint", "best.pt", "truncated"], EVAL_OUT),
    (not_a_dict, "best.pt", EVALUATE, {}, ["best.pt", "not a checkpoint"], EVAL_OUT),
    (malicious, "last.pt", RESUME, {}, ["checkpoint", "last.pt", "refused"], [LOCK]),
    (truncated, "last.pt", RESUME, {}, ["last.pt", "truncated"], [LOCK]),
    (malicious, "weights.pth", TRAIN_CMD, RESNET, ["resnet50 weights file", "weights.pth", "refused"], [LOCK]),
    (truncated, "weights.pth", TRAIN_CMD, BNINCEPTION, ["bninception weights file", "truncated"], [LOCK]),
]


@pytest.mark.parametrize("plant, name, command, overrides, fragments, writes", CASES,
                         ids=[f"{c[0].__name__}-{c[1]}-{c[2][0]}" for c in CASES])
def test_bad_checkpoint_is_refused(trained_probe, plant, name, command, overrides, fragments, writes):
    probe = trained_probe
    write_params(probe.project, overrides)
    marker = probe.outside / "code-was-run"
    target = probe.project / "weights.pth" if name == "weights.pth" else probe.project / TRAIN / "base" / name
    plant(target, marker)
    if name == "best.pt":  # evaluate reads both modes' files
        plant(probe.project / TRAIN / "bgaugment" / name, marker)
    before = probe.snapshot()
    assert_refused(probe.run(*command), str(target), *fragments)
    assert not marker.exists()
    assert_only_changed(before, probe.snapshot(), *writes)
