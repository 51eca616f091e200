"""Path escape, per dataset format: an index line (or a folder dataset's symbolic link) naming
an image outside the dataset root is refused by `bgbias index`, naming the file and line,
and nothing is written anywhere."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.reliability.conftest import VICTIM_BYTES, assert_ok, assert_only_changed, assert_refused
from tests.reliability.formats import cars_dataset, csv_dataset, cub_dataset, folder_dataset, sop_dataset


def up_to_outside(probe, start) -> str:
    """The relative path from `start` to outside/victim.jpg (../../..)."""
    return os.path.relpath(probe.outside / "victim.jpg", start)


def csv_parent(probe, root):
    return csv_dataset(root, [f"{up_to_outside(probe, root)},cat"]), ["labels.csv:10", "outside the dataset root"]


def csv_absolute(probe, root):
    return csv_dataset(root, [f"{probe.outside / 'victim.jpg'},cat"]), ["labels.csv:10", "absolute path"]


def csv_linked_folder(probe, root):
    cfg = csv_dataset(root, ["evil/victim.jpg,cat"])
    (root / "evil").symlink_to(probe.outside, target_is_directory=True)
    return cfg, ["labels.csv:10", "'evil/victim.jpg' resolves outside the dataset root"]


def cub_parent(probe, root):
    cfg = cub_dataset(root, [f"9 {up_to_outside(probe, root / 'images')}"], ["9 3"])
    return cfg, ["images.txt:9", "outside the dataset root"]


def sop_parent(probe, root):
    cfg = sop_dataset(root, [f"7 3 1 {up_to_outside(probe, root)}"])
    return cfg, ["Ebay_train.txt:8", "outside the dataset root"]


def sop_absolute(probe, root):
    cfg = sop_dataset(root, extra_test=[f"3 4 1 {probe.outside / 'victim.jpg'}"])
    return cfg, ["Ebay_test.txt:4", "absolute path"]


def cars_parent(probe, root):
    cfg = cars_dataset(root, [(up_to_outside(probe, root), 3)])
    return cfg, ["cars_annos.mat (annotation 9)", "outside the dataset root"]


def folder_link(probe, root):
    cfg = folder_dataset(root)
    (root / "cat" / "2.png").symlink_to(probe.outside / "victim.jpg")
    return cfg, ["cat/2.png", "resolves outside the dataset root"]


CASES = [csv_parent, csv_absolute, csv_linked_folder, cub_parent, sop_parent, sop_absolute, cars_parent, folder_link]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_index_refuses_paths_outside_the_root(probe, case):
    root = probe.project / "data" / "ds"
    root.mkdir(parents=True)
    dataset, fragments = case(probe, root)
    probe.params(dataset)
    before = probe.snapshot()
    assert_refused(probe.run("index"), str(root), *fragments)
    assert_only_changed(before, probe.snapshot())


def test_index_refuses_a_dataset_name_that_leaves_outputs(probe):
    """The dataset's name names outputs/index/<name>.csv (and the masks, train and tune
    folders): '../../../outside/evil' would write tmp/outside/evil.csv."""
    root = probe.project / "data" / "ds"
    root.mkdir(parents=True)
    probe.params(folder_dataset(root))
    raw = yaml.safe_load((probe.project / "params.yaml").read_text())
    name = "../../../outside/evil"
    raw["datasets"] = {name: raw["datasets"]["ds"]}
    raw["dataset"] = name
    (probe.project / "params.yaml").write_text(yaml.safe_dump(raw))
    before = probe.snapshot()
    assert_refused(probe.run("index"), "params.yaml", f"dataset name '{name}'")
    assert_only_changed(before, probe.snapshot())


@pytest.mark.parametrize("stage,folder", [("masks", "outputs/masks/ds"), ("prepare", "outputs/prepared/ds")])
def test_a_stage_folder_that_is_a_link_elsewhere_is_refused(probe, stage, folder):
    """The masks stage deletes masks of images not in the index and the prepare stage its
    old store: through a linked folder those would be another folder's files."""
    root = probe.project / "data" / "ds"
    root.mkdir(parents=True)
    probe.params(folder_dataset(root))
    assert_ok(probe.run("index"))
    (probe.project / folder).parent.mkdir(parents=True, exist_ok=True)
    (probe.project / folder).symlink_to(probe.outside, target_is_directory=True)
    before = probe.snapshot()
    assert_refused(probe.run(stage), folder, "is a symbolic link", "make it a plain folder")
    assert_only_changed(before, probe.snapshot(), "project/outputs/masks/.ds.lock")
    assert probe.victim.read_bytes() == VICTIM_BYTES


def test_training_refuses_a_checkpoint_folder_linked_elsewhere(tiny_project, tmp_path):
    from bgbias.core.config import load_params
    from bgbias.engine.train import fit
    from bgbias.core.errors import BgbiasError
    from bgbias.core.layout import Layout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "best.pt").write_bytes(VICTIM_BYTES)
    folder = tiny_project / "outputs" / "train" / "synthetic" / "base"
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BgbiasError, match="base is a symbolic link"):
        fit(load_params(tiny_project / "params.yaml"), Layout(tiny_project), "base", progress=False)
    assert (elsewhere / "best.pt").read_bytes() == VICTIM_BYTES
