"""The `inputs` stage's manifests: a content digest of each file from outside the pipeline
that a stage reads, identical when nothing changed, different when anything did."""

from __future__ import annotations

import json

from bgbias import stages
from bgbias.core.config import load_params
from bgbias.core.layout import Layout
from tests.conftest import make_image, write_params


def _manifests(root, overrides):
    params, layout = load_params(write_params(root, overrides)), Layout(root)
    stages.inputs(params, layout)
    return {name: json.loads(layout.input_manifest(name).read_text())
            for name in ("dataset", "gt_masks", "backgrounds", "weights", "tuned")}


def test_manifests_follow_the_content_of_outside_inputs(tmp_path):
    root, outside = tmp_path / "project", tmp_path / "outside"
    root.mkdir()
    make_image(outside / "ds" / "a" / "1.png")
    make_image(outside / "ds" / "a" / "2.png", color=(0, 0, 200))
    (outside / "ds" / "labels.csv").write_text("path,label\na/1.png,a\na/2.png,a\n")
    for pool in ("val", "test"):
        make_image(outside / "photos" / pool / "p.jpg", color=(9, 9, 9) if pool == "val" else (99, 9, 9))
    (outside / "w.pth").write_bytes(b"weights")
    overrides = {"dataset": "ext", "datasets": {"ext": {"format": "csv", "root": "../outside/ds"}},
                 "backgrounds": {"source": "../outside/photos"}, "model": {"weights": "../outside/w.pth"},
                 "loss_params": {"source": "tuned"}}
    first = _manifests(root, overrides)
    assert first["dataset"]["path"] == "../outside/ds" and first["dataset"]["files"] == 3
    assert first["dataset"]["covers"] == ["../outside/ds"]
    assert first["backgrounds"]["files"] == 2 and first["weights"]["files"] == 1
    assert first["gt_masks"] == {"path": None, "covers": []}
    assert first["tuned"]["missing"] and first["tuned"]["path"] == "params/tuned/ext/multi_similarity.yaml"
    assert _manifests(root, overrides) == first  # nothing changed: byte-identical manifests

    make_image(outside / "ds" / "a" / "2.png", color=(0, 0, 201))  # same name, new content
    (outside / "w.pth").write_bytes(b"other weights")
    tuned = root / "params" / "tuned" / "ext" / "multi_similarity.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text("loss_params: {alpha: 1.0}\n")
    second = _manifests(root, overrides)
    assert second["dataset"]["sha1"] != first["dataset"]["sha1"] and second["weights"] != first["weights"]
    assert second["backgrounds"] == first["backgrounds"] and second["tuned"]["files"] == 1


def test_stage_outputs_bundled_photos_and_paper_values_are_not_hashed(tmp_path):
    manifests = _manifests(tmp_path, {})  # the tiny defaults: synthetic set, bundled backgrounds, paper values
    assert manifests["dataset"] == {"path": "outputs/synthetic/images", "covers": [], "stage_output": True}
    assert manifests["backgrounds"]["path"] == "bundled" and len(manifests["backgrounds"]["photos"]) == 5
    assert manifests["tuned"] == {"path": None, "covers": [], "source": "paper"}
    assert manifests["weights"] == {"path": None, "covers": []}
