"""A training's model in the MLflow Model Registry and its dataset input: the registered
model embeds as evaluation does, `bgbias query` ranks by those embeddings, and
`mlflow models serve` answers with the same embeddings over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from bgbias import cli
from bgbias.core.config import load_params
from bgbias.core.images import load_rgb
from bgbias.engine.embed import embed
from bgbias.evaluation.retrieval import load_test_split, load_trained
from bgbias.engine.train import fit
from bgbias.data.inputs import training_inputs
from bgbias.core.layout import Layout
from bgbias.tracking.served_model import REQUIREMENTS
from bgbias.tracking.mlflow import MlflowTracker, load_registered_model, tracking_uri
from tests.conftest import write_params

NAME = "bgbias-synthetic-multi_similarity"
TOLERANCE = 1e-5  # max |difference| of unit-length embeddings: float rounding of other batch compositions


@pytest.fixture(scope="module")
def registered(prepared_data, tmp_path_factory) -> Path:
    """A tiny project whose base training (1 epoch) logged and registered its model."""
    root = tmp_path_factory.mktemp("served") / "project"
    shutil.copytree(prepared_data, root)
    params = load_params(write_params(root, {"train": {"epochs": 1, "device": "cpu"}}))  # evaluation on CPU too
    fit(params, Layout(root), "base", MlflowTracker.for_project(root), progress=False)
    return root


def evaluation_embeddings(root: Path) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """(embeddings, labels) of the test split as `bgbias evaluate` computes them, its samples
    and the raw test images uint8 [N, H, W, 3]."""
    params, layout = load_params(root / "params.yaml"), Layout(root)
    setup, test_set, _ = load_test_split(params, layout)
    model, _ = load_trained(params, layout, "base", setup.device)
    embeddings, labels = embed(model, DataLoader(test_set, batch_size=16), setup, progress=False)
    raw = np.stack([np.asarray(load_rgb(test_set.root / s.path)) for s in test_set.samples])
    return embeddings, labels, test_set.samples, raw


@pytest.fixture(autouse=True)
def served_on_cpu(monkeypatch):
    monkeypatch.setenv("BGBIAS_DEVICE", "cpu")  # as the evaluation here (on CUDA it runs in bf16)


def test_registered_model_embeds_as_evaluation_does(registered):
    from mlflow.tracking import MlflowClient

    model, key = load_registered_model(f"models:/{NAME}@base", tracking_uri(registered))
    assert key == f"{NAME}-v1"
    expected, _, _, raw = evaluation_embeddings(registered)
    got = model.predict(raw)
    assert got.shape == expected.shape == (12, 128)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)

    signature = model.metadata.signature
    assert signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "uint8", "shape": (-1, -1, -1, 3)}
    assert signature.outputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 128)}
    client = MlflowClient(tracking_uri(registered))
    version = client.get_model_version_by_alias(NAME, "base")
    run = client.get_run(version.run_id)
    assert version.tags["mode"] == "base" and run.info.run_name == "base-multi_similarity"
    assert version.tags["epoch"] == "1" and float(version.tags["val_map_at_r"]) == pytest.approx(
        json.loads((registered / "reports" / "train" / "base.json").read_text())["val_map_at_r"], abs=1e-6)
    logged = client.get_logged_model(version.source.removeprefix("models:/"))  # the version's logged model
    assert logged.source_run_id == run.info.run_id
    folder = Path(logged.artifact_location.removeprefix("file://"))
    assert (folder / "requirements.txt").read_text().split() == list(REQUIREMENTS)
    example = json.loads((folder / "input_example.json").read_text())
    assert np.asarray(example).shape == (2, 32, 32, 3)  # two validation images, evaluation-sized


def test_a_retried_registration_adds_no_second_version(registered):
    # A server lost after it registered the version but before it answered: the queued
    # model operation is sent again, with the same logged model; no version 2 appears.
    from mlflow.tracking import MlflowClient

    from bgbias.tracking.mlflow import _global_tracking_uri

    uri = tracking_uri(registered)
    version = MlflowClient(uri).get_model_version_by_alias(NAME, "base")
    tracker = MlflowTracker(uri)
    with _global_tracking_uri(uri):
        again = tracker._register(NAME, "base", version.source.removeprefix("models:/"), version.run_id, {})
    assert again == str(version.version) == "1"
    assert [str(v.version) for v in MlflowClient(uri).search_model_versions(f"name = '{NAME}'")] == ["1"]


def test_training_logs_its_dataset_as_an_input(registered):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(registered))
    run = client.get_run(client.get_model_version_by_alias(NAME, "base").run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    inputs = training_inputs(load_params(registered / "params.yaml"), Layout(registered))
    assert dataset.name == "synthetic" and dataset.source_type == "local"
    assert dataset.digest == hashlib.sha256(f"{inputs['index']}\n{inputs['masks']}".encode()).hexdigest()[:16]
    assert json.loads(dataset.source) == {"uri": "outputs/index/synthetic.csv"}
    # The tiny project: 4 / 3 / 3 classes of 4 images for train / val / test.
    assert json.loads(dataset.profile) == {"train_images": 16, "train_classes": 4, "val_images": 12,
                                           "val_classes": 3, "test_images": 12, "test_classes": 3,
                                           "index_sha1": inputs["index"], "masks_sha1": inputs["masks"]}
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}


def test_evaluation_logs_its_test_split_as_an_input(registered, tmp_path):
    # The test metrics point at what they were computed on: the index, masks and background
    # pools by content (a dataset of its own, "<dataset>-test", context "evaluation").
    from mlflow.tracking import MlflowClient

    from bgbias.evaluation.retrieval import evaluate_trained
    from bgbias.data.inputs import data_inputs

    root = tmp_path / "project"
    shutil.copytree(registered, root)  # the training's run and store too; the shared one stays as it is
    params, layout = load_params(root / "params.yaml"), Layout(root)
    evaluate_trained(params, layout, MlflowTracker.for_project(root), progress=False, modes=("base",))
    client = MlflowClient(tracking_uri(root))
    run = client.get_run(client.get_model_version_by_alias(NAME, "base").run_id)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic", "synthetic-test"}
    tested = inputs["synthetic-test"]
    digests = data_inputs(params, layout)
    assert tested.dataset.digest == hashlib.sha256(
        f"{digests['index']}\n{digests['masks']}\n{digests['backgrounds']}".encode()).hexdigest()[:16]
    assert {t.key: t.value for t in tested.tags} == {"mlflow.data.context": "evaluation"}
    profile = json.loads(tested.dataset.profile)
    assert (profile["test_images"], profile["test_classes"], profile["replaced_draws"]) == (12, 3, 3)
    assert profile["test_backgrounds"] == len(list((root / "outputs" / "backgrounds" / "test").iterdir()))
    assert "test_clean_map_at_r" in run.data.metrics


def test_query_ranks_the_test_split_and_draws_a_contact_sheet(registered, tmp_path, capsys):
    expected, labels, samples, _ = evaluation_embeddings(registered)
    query = samples[5]  # a test image: its class is known and it is not its own neighbour
    image = registered / "outputs" / "synthetic" / "images" / query.path
    sheet = tmp_path / "sheet.png"
    argv = ["--params", str(registered / "params.yaml"), "query", str(image), "--model", f"models:/{NAME}@base",
            "--k", "3", "--out", str(sheet)]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{image}  (class {query.class_name})"

    distances = np.linalg.norm(expected - expected[5], axis=1)
    order = [i for i in np.argsort(distances) if i != 5][:3]  # brute force over evaluation's embeddings
    for line, i in zip(lines[1:4], order):
        rank, distance, class_name, path, *mark = line.split()
        assert path == samples[i].path and class_name == samples[i].class_name
        assert abs(float(distance) - distances[i]) < 1e-4
        assert " ".join(mark) == ("same class" if labels[i] == labels[5] else "other class")
    with Image.open(sheet) as picture:  # 1 + 3 tiles of 112 px; the frames: query blue, then green/red
        assert picture.size == (4 * 112, 112 + 28)
        frames = [picture.getpixel((col * 112 + 1, 1)) for col in range(4)]
    assert frames[0] == (40, 90, 200)
    assert frames[1:] == [(30, 160, 60) if labels[i] == labels[5] else (200, 40, 40) for i in order]
    cached = list((registered / "outputs" / "query" / "cache").glob(f"{NAME}-v1-*.npy"))
    assert len(cached) == 1 and np.allclose(np.load(cached[0]), expected, atol=TOLERANCE)


@pytest.mark.parametrize("model, image, message", [
    ("models:/bgbias-nothing@base", None, "no registered model 'bgbias-nothing'"),
    (f"models:/{NAME}@gone", None, f"'{NAME}' has no alias gone (it has @base)"),
    (f"models:/{NAME}/9", None, f"'{NAME}' has no version 9 (it has 1)"),
    (f"models:/{NAME}@base", "missing.png", "query image not found: "),
])
def test_query_errors_are_one_line(registered, tmp_path, capsys, model, image, message):
    image = str(tmp_path / image) if image else str(next((registered / "outputs" / "synthetic").rglob("*.png")))
    assert cli.main(["--params", str(registered / "params.yaml"), "query", image, "--model", model,
                     "--out", str(tmp_path / "sheet.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "sheet.png").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_local_embeddings(registered, tmp_path):
    expected, _, _, raw = evaluation_embeddings(registered)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(registered), "HF_HUB_OFFLINE": "1",
           "BGBIAS_DEVICE": "cpu"}
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"models:/{NAME}@base", "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer within 240 s"
                time.sleep(1)
        body = json.dumps({"inputs": raw.tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            got = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers (their own process group)
        server.wait(timeout=30)
        log.close()
    assert got.shape == (12, 128)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
