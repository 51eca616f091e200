import subprocess
import sys


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bgbias", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_params_is_one_line_error(tmp_path):
    (tmp_path / "params.yaml").write_text("dataset: synthetic\nloss: center\ndatasets: {}\n")
    result = run("--params", str(tmp_path / "params.yaml"), "check")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "loss" in lines[0]


def test_unknown_dataset_stage_fails_before_work(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "dataset: cars\nloss: triplet\ndatasets:\n  synthetic: {format: csv, root: x}\n")
    result = run("--params", str(tmp_path / "params.yaml"), "index")
    assert result.returncode == 2
    assert "unknown dataset 'cars'" in result.stderr and "synthetic" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_masks_stage_without_assets_says_what_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "dataset: toy\nloss: triplet\nassets_dir: nothing_here\ndatasets:\n  toy: {format: csv, root: x}\n")
    (tmp_path / "outputs" / "index").mkdir(parents=True)
    (tmp_path / "outputs" / "index" / "toy.csv").write_text("path,class_id,class_name,split\n")
    result = run("--params", str(tmp_path / "params.yaml"), "masks")
    assert result.returncode == 2
    assert "missing rembg u2netp segmentation model" in result.stderr and "make setup" in result.stderr


def test_masks_folder_command_takes_the_engine(tmp_path, monkeypatch, capsys):
    import pytest
    import torch

    from bgbias import cli
    from tests.conftest import ASSETS, object_image

    if not (ASSETS / "u2netp.onnx").is_file():
        pytest.skip("u2netp.onnx not fetched: run `make setup`")
    monkeypatch.chdir(tmp_path)  # no params.yaml here: --assets-dir and the masks defaults suffice
    object_image(tmp_path / "in" / "a.png", size=32)
    base = ["masks", "in", "out", "--assets-dir", str(ASSETS)]
    assert cli.main(base + ["--backend", "torch", "--device", "cpu", "--batch-size", "2"]) == 0
    assert (tmp_path / "out" / "a.png").is_file() and "1 masks written" in capsys.readouterr().out
    assert cli.main(base + ["--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert cli.main(base + ["--workers", "0"]) == 2
    assert "--workers must be >= 1 (got 0)" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(base + ["--backend", "torch", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no CUDA device" in err[0]


def test_masks_stage_refuses_folder_flags_it_would_ignore(tmp_path, monkeypatch, capsys):
    # The stage's engine settings are its declared params (masks.*): a flag would be lost
    # on the next `dvc repro` and leave masks DVC thinks were made another way.
    from bgbias import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["masks", "--precision", "fp16", "--backend", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: bgbias masks: --backend, --precision apply to a folder run (IMAGES_DIR OUT_DIR); "
                   "the stage reads masks.* from params.yaml (e.g. dvc exp run -S masks.precision=fp16)"]
    assert not (tmp_path / "outputs").exists()
