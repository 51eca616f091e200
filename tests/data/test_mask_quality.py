import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bgbias.masks.quality import evaluate_masks, iou_and_overlap
from bgbias.core.errors import BgbiasError


def test_iou_and_overlap_by_hand():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 255  # 4 object pixels
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, 1:3] = 200  # 4 predicted, 2 of them on the object
    iou, overlap = iou_and_overlap(pred, gt)
    assert iou == pytest.approx(2 / 6) and overlap == pytest.approx(2 / 4)
    pred[:2, 1:3] = 127  # below the threshold: predicts nothing
    assert iou_and_overlap(pred, gt) == (0.0, 0.0)
    assert iou_and_overlap(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, None)


def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_evaluate_groups_and_missing(tmp_path):
    full, half = np.full((2, 2), 255), np.array([[255, 255], [0, 0]])
    save(tmp_path / "gt" / "a" / "1.png", full)
    save(tmp_path / "pred" / "a" / "1.png", half)  # IoU 0.5, overlap 0.5
    save(tmp_path / "gt" / "b" / "2.png", half)
    save(tmp_path / "pred" / "b" / "2.png", half)  # IoU 1, overlap 1
    save(tmp_path / "gt" / "b" / "3.png", half)  # no prediction
    report = evaluate_masks(tmp_path / "pred", tmp_path / "gt", groups={"a/1.png": "train", "b/2.png": "test"})
    assert report["missing_predictions"] == 1
    assert report["groups"]["all"] == {"n": 2, "mean_iou": 0.75, "mean_overlap": 0.75}
    assert report["groups"]["train"]["mean_iou"] == 0.5 and report["groups"]["test"]["mean_iou"] == 1.0


def test_size_mismatch_is_an_error(tmp_path):
    save(tmp_path / "gt" / "1.png", np.zeros((2, 2)))
    save(tmp_path / "pred" / "1.png", np.zeros((3, 2)))
    with pytest.raises(BgbiasError, match="differs from ground truth"):
        evaluate_masks(tmp_path / "pred", tmp_path / "gt")


def test_cli_prints_and_writes_report(tmp_path):
    save(tmp_path / "gt" / "1.png", np.full((2, 2), 255))
    save(tmp_path / "pred" / "1.png", np.array([[255, 0], [0, 0]]))
    result = subprocess.run([sys.executable, "-m", "bgbias", "mask-quality", str(tmp_path / "pred"),
                             str(tmp_path / "gt"), "--out", str(tmp_path / "r.json")],
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["groups"]["all"]["mean_iou"] == 0.25
    assert json.loads((tmp_path / "r.json").read_text())["groups"]["all"]["mean_overlap"] == 0.25


def test_cli_refuses_a_folder_as_out_in_one_line(tmp_path, capsys):
    from bgbias import cli

    save(tmp_path / "gt" / "1.png", np.full((2, 2), 255))
    save(tmp_path / "pred" / "1.png", np.full((2, 2), 255))
    (tmp_path / "out").mkdir()
    argv = ["mask-quality", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'out'} is a folder: name the JSON file to write\n"
    assert list((tmp_path / "out").iterdir()) == [] and not list(tmp_path.glob(".out.*"))
