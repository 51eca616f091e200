"""Every stage of dvc.yaml and pipelines/*/dvc.yaml declares every param and file it reads.

A read that is not declared is a change DVC does not see: the stage is not rerun and its
outputs silently describe the old input. This test runs every stage (the command DVC would
run, as DVC resolves it, in DVC's order) on a tiny project whose dataset, ground-truth
masks and background photos live outside the project and whose loss params come from a
tuned file, while recording

- every params key read: the loaded `Params` records each field it hands out (a container
  counts when it is iterated or dumped whole);
- every file or folder opened for reading or listed (an audit hook on `open`,
  `os.scandir` and `os.listdir`), inside the project or the outside folder;

and fails listing each read that its stage's `params`/`deps`/`outs` do not declare (the
files of an `always_changed` stage excepted: it runs every time). A declared path covers
everything under it; a dep on an `inputs` manifest covers the paths
it lists under `covers`; a dep on the index covers the images it lists (it records each
one's sha1).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bgbias import cli
from bgbias.core import config
from bgbias.core.config import Section, SyntheticConfig
from bgbias.data.synthetic import generate
from bgbias.tracking.mlflow import NullTracker
from tests.conftest import ASSETS, REPO

# ---- params reads -----------------------------------------------------------------------


class ParamsRecorder:
    """Gives loaded params dotted names and records the names of the values read from them."""

    def __init__(self):
        self.paths: dict[int, str] = {}
        self.replaced: dict[int, frozenset] = {}  # fields a model_copy(update=...) put in: not params
        self.keep: list = []  # registered objects stay alive, so their ids stay theirs
        self.reads: set[str] = set()

    @staticmethod
    def join(path: str, name: object) -> str:
        return f"{path}.{name}" if path else str(name)

    def read(self, path: str, value: object) -> None:
        if not isinstance(value, (Section, RecordingDict)):  # containers count by what is read from them
            self.reads.add(path)

    def register(self, obj: object, path: str, skip: frozenset = frozenset()) -> object:
        if isinstance(obj, Section):
            self.paths[id(obj)] = path
            self.replaced[id(obj)] = skip
            self.keep.append(obj)
            for name in type(obj).__pydantic_fields__:
                if name not in skip:
                    obj.__dict__[name] = self.register(obj.__dict__[name], self.join(path, name))
        elif isinstance(obj, dict):
            if not isinstance(obj, RecordingDict):
                obj = RecordingDict(obj, path, self)
            for key in list(dict.keys(obj)):
                dict.__setitem__(obj, key, self.register(dict.__getitem__(obj, key), self.join(path, key)))
        return obj


class RecordingDict(dict):
    def __init__(self, data: dict, path: str, recorder: ParamsRecorder):
        super().__init__(data)
        self.path, self.recorder = path, recorder

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.recorder.read(self.recorder.join(self.path, key), value)
        return value

    def get(self, key, default=None):
        value = super().get(key, default)
        self.recorder.read(self.recorder.join(self.path, key), value)
        return value

    def _whole(self):
        self.recorder.reads.add(self.path)

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def __contains__(self, key):
        self._whole()
        return super().__contains__(key)

    def __len__(self):
        self._whole()
        return super().__len__()

    def keys(self):
        self._whole()
        return super().keys()

    def values(self):
        self._whole()
        return super().values()

    def items(self):
        self._whole()
        return super().items()


def install_params_recorder(monkeypatch) -> ParamsRecorder:
    recorder = ParamsRecorder()
    plain_getattribute = Section.__getattribute__
    plain_dump, plain_copy = Section.model_dump, Section.model_copy
    real_load = config.load_params

    def getattribute(self, name):
        value = plain_getattribute(self, name)
        if name in type(self).__pydantic_fields__:
            path = recorder.paths.get(id(self))
            if path is not None and name not in recorder.replaced[id(self)]:
                recorder.read(recorder.join(path, name), value)
        return value

    def model_dump(self, *args, **kwargs):
        path = recorder.paths.get(id(self))
        if path is not None:
            recorder.reads.add(path)
        return plain_dump(self, *args, **kwargs)

    def model_copy(self, *args, update=None, **kwargs):
        copy = plain_copy(self, *args, update=update, **kwargs)
        path = recorder.paths.get(id(self))
        if path is not None:  # values put in by `update` (this copy's or an earlier one's) are not params reads
            recorder.register(copy, path, skip=frozenset(update or ()) | recorder.replaced[id(self)])
        return copy

    def load_params(path="params.yaml", base=None):
        return recorder.register(real_load(path, base), "")

    monkeypatch.setattr(Section, "__getattribute__", getattribute)
    monkeypatch.setattr(Section, "model_dump", model_dump)
    monkeypatch.setattr(Section, "model_copy", model_copy)
    monkeypatch.setattr(config, "load_params", load_params)
    return recorder


# ---- file reads -------------------------------------------------------------------------

_FILE_READS: list[str] | None = None  # recording when a list
_HOOKED = False
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple) -> None:
    if _FILE_READS is None or event not in ("open", "os.scandir", "os.listdir"):
        return
    path = args[0] if args else None
    if event != "open" and path is None:
        path = "."
    if path is None or isinstance(path, int):
        return
    if event == "open" and isinstance(args[2], int) and args[2] & _WRITE_FLAGS:
        return  # a write; only reads are dependencies
    try:
        _FILE_READS.append(os.path.realpath(os.fsdecode(path)))
    except (TypeError, ValueError):
        pass


def start_recording_files() -> list[str]:
    global _FILE_READS, _HOOKED
    if not _HOOKED:  # audit hooks cannot be removed: one per session, off unless recording
        sys.addaudithook(_audit)
        _HOOKED = True
    _FILE_READS = []
    return _FILE_READS


def stop_recording_files() -> None:
    global _FILE_READS
    _FILE_READS = None


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# ---- the tiny project -------------------------------------------------------------------

TUNED = {"multi_similarity": {"alpha": 2.5, "beta": 40.0, "base": 0.5}}


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)).save(path)


def make_project(tmp_path: Path) -> tuple[Path, Path]:
    """(project, outside): the project holds dvc.yaml and params.yaml; the dataset, its
    ground-truth masks and the background photos are in `outside`."""
    root, outside = tmp_path / "project", tmp_path / "outside"
    rendered = tmp_path / "rendered"
    generate(SyntheticConfig(classes={"train": 4, "val": 2, "test": 2}, images_per_class=2, image_size=40,
                             workers=1), 5, rendered)
    shutil.copytree(rendered / "images", outside / "dataset")
    shutil.copytree(rendered / "masks", outside / "gt_masks")
    for pool in ("val", "test"):
        for i in range(2):
            _photo(outside / "photos" / pool / f"{i}.jpg", seed=10 * len(pool) + i)
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    for pipeline in (REPO / "pipelines").glob("*/dvc.yaml"):
        (root / pipeline.relative_to(REPO)).parent.mkdir(parents=True)
        shutil.copy(pipeline, root / pipeline.relative_to(REPO))
    params = {
        "dataset": "outside", "loss": "multi_similarity", "seed": 1, "data_seed": 2, "seeds": [3], "assets_dir": str(ASSETS),
        "datasets": {"synthetic": {"format": "csv", "root": "outputs/synthetic/images",
                                   "gt_masks": "outputs/synthetic/masks"},
                     "outside": {"format": "csv", "root": "../outside/dataset", "gt_masks": "../outside/gt_masks"}},
        "index": {"workers": 1},
        "synthetic": {"classes": {"train": 2, "val": 2, "test": 2}, "images_per_class": 2, "image_size": 32,
                      "workers": 1},
        "backgrounds": {"source": "../outside/photos", "procedural_per_pool": 1},
        "masks": {"workers": 1},
        "mask_quality": {"threshold": 128},
        "prepare": {"enabled": True},  # the opt-in input path reads more than the default one
        "model": {"backbone": "efficientnet_lite0", "weights": None},
        "train": {"epochs": 1, "iterations_per_epoch": 1, "batch_size": 4, "m_per_class": 2, "lr": 1e-4,
                  "resize": 40, "crop": 32, "eval_batch_size": 16},
        "loss_params": {"source": "tuned", "overrides": {}},
        "eval": {"replaced_draws": 1},
        "attribution": {"images": 2, "batch_size": 2, "noisy_copies": 2, "figure_rows": 2},
        "tune": {"n_trials": 1, "epochs": 1, "pruner": "none"},
        "bias_curve": {"bg_correlation": [0.5], "bgaugment_p": [0.5]},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "pipelines" / "paper" / "params.yaml").write_text(yaml.safe_dump(paper_params(params)))
    tuned = root / "params" / "tuned" / "outside" / "multi_similarity.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text(yaml.safe_dump({"loss": "multi_similarity", "dataset": "outside",
                                     "loss_params": TUNED["multi_similarity"]}))
    return root, outside


def paper_params(params: dict) -> dict:
    """The paper grid's params file: one cell (the outside dataset, the project's loss, base),
    every key its stages declare written out (DVC requires them)."""
    grid = {key: value for key, value in params.items() if key not in ("synthetic", "mask_quality", "tune")}
    grid["datasets"] = {"outside": params["datasets"]["outside"]}
    grid["paper"] = {"datasets": ["outside"], "losses": [params["loss"]], "modes": ["base"], "backbone": "auto",
                     "storage": None, "cluster": {"gpus_per_cell": 0}}
    grid["loss_params"] = {"source": "paper", "overrides": {}}
    grid["prepare"] = {"enabled": False}  # the grid builds no prepared store
    grid["model"] = {**params["model"], "embedding_dim": 128, "freeze_bn": True}
    grid["train"] = {**params["train"], "device": "cpu", "workers": None}
    grid["tracking"] = {"uri": None}
    return grid


def dvc_stages(root: Path) -> list:
    """The project's stages as DVC resolves them, dependencies first."""
    import networkx as nx
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True)
    repo = Repo(str(root))
    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    return list(nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: s.addressing))


# ---- what a stage declares --------------------------------------------------------------


def declared_params(stage, params_file: Path) -> set[str]:
    from dvc.dependency.param import ParamsDependency

    keys: set[str] = set()
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency) and Path(dep.fs_path) == params_file:
            keys |= set(dep.params) if dep.params else {""}  # no keys: the whole file
    return keys


def declared_paths(stage, root: Path, dataset_root: Path) -> list[str]:
    from dvc.dependency.param import ParamsDependency

    paths = []
    for out in stage.outs:
        paths.append(os.path.realpath(out.fs_path))
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            continue
        path = Path(dep.fs_path)
        paths.append(os.path.realpath(path))
        if path.is_relative_to(root / "outputs") and "inputs" in path.parts and path.is_file():  # [paper/]inputs/...
            paths += [os.path.realpath(root / c) for c in json.loads(path.read_text())["covers"]]
        if path.parent.name == "index" and path.suffix == ".csv" and path.is_file():
            with open(path, newline="") as f:
                paths += [os.path.realpath(dataset_root / row["path"]) for row in csv.DictReader(f)]
    return paths


def undeclared_params(reads: set[str], declared: set[str]) -> list[str]:
    return sorted(k for k in reads if not any(d == "" or k == d or k.startswith(d + ".") for d in declared))


# ---- the test ---------------------------------------------------------------------------


@pytest.fixture
def offline_assets():
    if not all((ASSETS / n).is_file() for n in ("u2netp.onnx", "efficientnet-lite0-57934424.pth")):
        pytest.skip("offline assets not fetched: run `make setup`")


def test_every_stage_declares_every_param_and_file_it_reads(tmp_path, monkeypatch, offline_assets):
    root, outside = make_project(tmp_path)
    monkeypatch.chdir(root)  # stage addresses relative to the project
    stages = dvc_stages(root)
    names = [s.addressing for s in stages]
    assert {"inputs", "synthetic", "index", "masks", "prepare", "train@base", "evaluate", "report"} <= set(names)
    assert sum(n.startswith("pipelines/tune/dvc.yaml:tune@") for n in names) == 5
    assert {"pipelines/bias_curve/dvc.yaml:bg_correlation@0.5", "pipelines/bias_curve/dvc.yaml:bgaugment_p@0.5",
            "pipelines/bias_curve/dvc.yaml:curve"} <= set(names), names
    paper = "pipelines/paper/dvc.yaml:"
    assert {f"{paper}masks@outside", f"{paper}train@outside-multi_similarity-base", f"{paper}attribute@outside-"
            "multi_similarity-base", f"{paper}report"} <= set(names)
    assert {f"pipelines/seeds/dvc.yaml:{s}" for s in ("train@3-base", "evaluate@3", "attribute@3", "report")} <= set(names)

    recorder = install_params_recorder(monkeypatch)
    monkeypatch.setattr(cli, "_tracker", lambda *args, **kwargs: NullTracker())  # the MLflow store is no input
    params_files = {"root": root / "params.yaml", "paper": root / "pipelines" / "paper" / "params.yaml"}
    watched = [os.path.realpath(p) for p in (root, outside, ASSETS)]
    problems: list[str] = []
    for stage in stages:
        argv = shlex.split(stage.cmd)
        assert argv[0] == "bgbias", stage.cmd
        monkeypatch.chdir(stage.wdir)
        recorder.reads.clear()
        reads = start_recording_files()
        try:
            code = cli.main(argv[1:])
        finally:
            stop_recording_files()
        assert code == 0, f"{stage.addressing}: `{stage.cmd}` failed"

        params_file = params_files["paper" if argv[1] == "grid" else "root"]
        for key in undeclared_params(recorder.reads, declared_params(stage, params_file)):
            problems.append(f"{stage.addressing}: reads param {key}")
        if stage.always_changed:  # runs every time: its files need no declaring (its params still do)
            continue
        declared = declared_paths(stage, root, outside / "dataset")
        for path in sorted(set(reads)):
            if not any(_under(path, w) for w in watched) or path == os.path.realpath(params_file):
                continue
            if not any(_under(path, d) for d in declared):
                problems.append(f"{stage.addressing}: reads {os.path.relpath(path, root)}")
    assert not problems, "undeclared reads:\n" + "\n".join(problems)
