"""Experiment tracking. The only module that imports MLflow; the rest of the code gets a
`Tracker` passed in (a `NullTracker` when tracking is off).

Store (`tracking.uri`): by default `sqlite:///<project>/mlruns/mlflow.db` with artifacts
under `<project>/mlruns/`; the path is absolute and, when a stage runs inside a DVC
temp/queued experiment workspace (`<project>/.dvc/tmp/exps/...`), it points at the project
itself, so every experiment lands in one store. Or an MLflow tracking server
(`http://host:port`, artifacts uploaded through its proxy) shared by several machines.

A server that is down when a command starts is a one-line error. One that goes away
mid-run does not stop the training: the run's updates are kept, in order, in
`<project>/mlruns/unsent/` and sent when the server answers again (retried at every later
update of the run; what is left at exit goes with the next tracked command or `bgbias sync`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from bgbias.core.errors import BgbiasError
from bgbias.core.files import atomic_write
from bgbias.core.process_guard import pid_alive
from bgbias.tracking.services import is_server, probe, redact, require

log = logging.getLogger(__name__)

DVC_TEMP_WORKSPACE = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


class Tracker(Protocol):
    run_id: str | None

    def start(self, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_run_id: str | None = None) -> str | None: ...

    def attach(self, run_id: str) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_dataset(self, dataset: Mapping[str, Any]) -> None: ...

    def log_model(self, checkpoint: Path, registered_name: str, alias: str, example: Any, resize: int,
                  crop: int) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    def search_runs(self, experiment: str, tags: Mapping[str, str]): ...


RUN_COLUMNS = ["run_id", "status", "start_time", "end_time"]


def runs_frame(rows: list[dict]):
    """One row per run, columns as `mlflow.search_runs` names them: run_id, status,
    start_time, end_time, `metrics.<name>`, `params.<name>`, `tags.<name>`."""
    import pandas as pd

    return pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)


class NullTracker:
    """Tracks nothing (tests, `--no-track`)."""

    run_id = None

    def start(self, experiment, run_name, params, tags, resume_run_id=None):
        return None

    def attach(self, run_id):
        return None

    def log_metrics(self, metrics, step=None):
        return None

    def log_artifact(self, path, artifact_path=None):
        return None

    def set_tags(self, tags):
        return None

    def log_dataset(self, dataset):
        return None

    def log_model(self, checkpoint, registered_name, alias, example, resize, crop):
        return None

    def finish(self, status="FINISHED"):
        return None

    def search_runs(self, experiment, tags):
        return runs_frame([])


def project_store(project_root: Path) -> Path:
    """`<project>/mlruns`, seen through a DVC temp experiment workspace if we are in one."""
    root = str(Path(project_root).resolve())
    if DVC_TEMP_WORKSPACE in root + os.sep:
        root = root.split(DVC_TEMP_WORKSPACE)[0]
    return Path(root) / "mlruns"


def tracking_uri(project_root: Path) -> str:
    return f"sqlite:///{project_store(project_root) / 'mlflow.db'}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 1e-5}} -> {'train.lr': '1e-05'}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def context_tags(project_root: Path) -> dict[str, str]:
    """git commit and, under `dvc exp run`, the DVC experiment name."""
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        log.debug("no git commit to tag (git missing or too slow)")
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


UNSENT = "unsent"  # under the project store: updates a lost tracking server has not received yet

# MLflow's HTTP client retries for about 4 minutes by default and waits up to 120 s per
# request; a lost server must cost seconds per update instead. Its run links on stdout
# would mix with the JSON our commands print. Set only where the user has not.
HTTP_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class MlflowTracker:
    """Logs one run at a time. Every update is an operation (a dict) applied in order;
    with a tracking server, operations it cannot take are kept (in memory and in a spool
    file) and sent first once it answers again."""

    def __init__(self, uri: str, artifact_root: Path | None = None, spool_dir: Path | None = None):
        for name, value in HTTP_CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri
        self.artifact_root = Path(artifact_root) if artifact_root else None  # None: the server decides
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self._has_run = False
        self._buffered = is_server(uri)  # only a server can go away mid-run; a local store's errors are real
        self._spool_dir = Path(spool_dir) if spool_dir else None
        self._spool_file: Path | None = None
        self._pending: list[dict] = []

    @classmethod
    def for_project(cls, project_root: Path, uri: str | None = None, check: bool = True) -> MlflowTracker:
        """The project store, or `uri` (`tracking.uri`); `check`: fail now, in one line, if
        the server does not answer, and send what earlier commands could not."""
        store = project_store(project_root)
        store.mkdir(parents=True, exist_ok=True)
        if uri is None:
            return cls(tracking_uri(project_root), store / "artifacts")
        if check:
            require(uri, "tracking.uri")
        tracker = cls(uri, None if is_server(uri) else store / "artifacts", store / UNSENT)
        if check and tracker._buffered:
            send_unsent(store / UNSENT, uri)
        return tracker

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None if self.artifact_root is None else (self.artifact_root / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            experiment = self.client.get_experiment_by_name(name)  # another worker created it meanwhile
            if experiment is None:
                raise
            return experiment.experiment_id

    # The Tracker protocol: each call becomes one operation.

    def start(self, experiment, run_name, params, tags, resume_run_id=None):
        self._has_run = True
        self.run_id = resume_run_id
        if resume_run_id:
            self._submit({"op": "resume"})
        else:
            self._submit({"op": "create", "experiment": experiment, "run_name": run_name, "tags": dict(tags),
                          "params": flatten(params)})
        return self.run_id  # None while the server is away (the run is created when it is back)

    def attach(self, run_id):
        """Log into an existing (finished) run, e.g. test metrics of a training run."""
        self._has_run = True
        self.run_id = run_id

    def log_metrics(self, metrics, step=None):
        self._submit({"op": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step or 0,
                      "timestamp": int(time.time() * 1000)})

    def log_artifact(self, path, artifact_path=None):
        self._submit({"op": "artifact", "path": str(path), "artifact_path": artifact_path})

    def set_tags(self, tags):
        if self._has_run:
            self._submit({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_dataset(self, dataset):
        """A dataset input of the run (the UI's Dataset column): `dataset` holds name, digest,
        source, context, the index's columns and a profile (split sizes, full digests)."""
        self._submit({"op": "dataset", "dataset": dict(dataset)})

    def log_model(self, checkpoint, registered_name, alias, example, resize, crop):
        """The embedder of `checkpoint` (a best.pt) as an MLflow pyfunc model
        (`bgbias.tracking.served_model`), registered as a new version of `registered_name` that
        `alias` points at. `example`: uint8 [B, H, W, 3] images, the input example."""
        import numpy as np

        from bgbias.models.checkpoint import load_checkpoint
        from bgbias.tracking.served_model import write_model_data

        folder = Path(tempfile.mkdtemp(prefix="bgbias-model-"))
        try:
            write_model_data(load_checkpoint(checkpoint), resize, crop, folder / "data")
            np.save(folder / "example.npy", np.asarray(example, dtype=np.uint8))
            op = {"op": "model", "path": str(folder), "name": registered_name, "alias": alias}
            self._submit(op)
        finally:
            if Path(folder).exists() and not any(o.get("copy") == str(folder) for o in self._pending):
                shutil.rmtree(folder, ignore_errors=True)

    def finish(self, status="FINISHED"):
        if self._has_run:
            self._submit({"op": "finish", "status": status, "end_time": int(time.time() * 1000)})
        if self._pending:
            log.warning("tracking server %s still unreachable: %d update(s) of this run kept in %s; the next "
                        "tracked command (or `bgbias sync`) sends them", redact(self.uri), len(self._pending),
                        self._spool_file or "memory (lost at exit)")

    def search_runs(self, experiment, tags):
        """The experiment's runs carrying every tag in `tags` (any value where the value is
        None), newest first, as a pandas DataFrame (`runs_frame`)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return runs_frame([])
        query = " and ".join(f"tags.{k} = '{v}'" if v is not None else f"tags.{k} != ''" for k, v in tags.items())
        rows, token = [], None
        while True:
            page = self.client.search_runs([found.experiment_id], query, max_results=1000, page_token=token,
                                           order_by=["attributes.start_time DESC"])
            for run in page:
                rows.append({"run_id": run.info.run_id, "status": run.info.status,
                             "start_time": run.info.start_time, "end_time": run.info.end_time,
                             **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
                             **{f"params.{k}": v for k, v in run.data.params.items()},
                             **{f"tags.{k}": v for k, v in run.data.tags.items()}})
            token = page.token
            if not token:
                return runs_frame(rows)

    # Operations.

    def _apply(self, op: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "create":
            if not op.get("created"):  # a retry after params failed must not create a second run
                run = self.client.create_run(self._experiment_id(op["experiment"]), run_name=op["run_name"],
                                             tags=op["tags"])
                op["created"] = run.info.run_id
            self.run_id = op["created"]
            items = [Param(k, v[:6000]) for k, v in op["params"].items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self.client.log_batch(self.run_id, params=items[i:i + 100])
            return
        run_id = op.get("run_id") or self.run_id  # None: the run of a create still queued before it
        if kind == "resume":
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        elif kind == "metrics":
            items = [Metric(k, v, op["timestamp"], op["step"]) for k, v in op["metrics"].items()]
            self.client.log_batch(run_id, metrics=items)
        elif kind == "artifact":
            self.client.log_artifact(run_id, op["path"], op["artifact_path"])
        elif kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
        elif kind == "dataset":
            self._log_dataset(run_id, op["dataset"])
        elif kind == "model":
            self._log_model(run_id, op)
        elif kind == "finish":
            self.client.set_terminated(run_id, status=op["status"], end_time=op["end_time"])
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _submit(self, op: dict) -> None:
        op["run_id"] = self.run_id
        if not self._buffered:
            return self._apply(op)
        if self._pending and not self._flush():
            return self._keep(op)
        try:
            self._apply(op)
        except Exception as exc:
            reason = probe(self.uri)
            if reason is None:
                raise  # the server answers: a real error
            log.warning("tracking server %s unreachable (%s; %s): training goes on, this run's updates are "
                        "kept and retried", redact(self.uri), reason, type(exc).__name__)
            self._keep(op)

    def _log_dataset(self, run_id: str, dataset: dict) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.types import ColSpec, DataType, Schema
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        meta = MetaDataset(LocalArtifactDatasetSource(dataset["source"]), name=dataset["name"],
                           digest=dataset["digest"], schema=Schema([ColSpec(DataType.string, c)
                                                                    for c in dataset["columns"]]))
        entity = Dataset(name=meta.name, digest=meta.digest, source_type=meta.source._get_source_type(),
                         source=meta.source.to_json(), schema=meta.to_dict()["schema"],
                         profile=json.dumps(dataset["profile"]))
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT,
                                                                                     dataset["context"])])])

    def _log_model(self, run_id: str, op: dict) -> None:
        import mlflow
        import numpy as np
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        import bgbias
        from bgbias.tracking.served_model import REQUIREMENTS, read_settings

        start = time.perf_counter()
        folder = Path(op["path"])
        settings = read_settings(folder / "data")
        signature = ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                                   Schema([TensorSpec(np.dtype(np.float32), (-1, settings["model"]["embedding_dim"]))]))
        code = folder / "code" / "bgbias"  # the package the model runs, without bytecode caches
        if not code.exists():
            shutil.copytree(Path(bgbias.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
        tags = {"mode": settings["mode"], "dataset": settings["dataset"], "loss": settings["loss"],
                "seed": str(settings["seed"]), "epoch": str(settings["epoch"]),
                settings["selection"]: f"{settings['selection_value']:.6f}"}
        experiment_id = self.client.get_run(run_id).info.experiment_id
        # The logged model is created here, in the run's experiment (MLflow would use the
        # process's current experiment), then filled by Model.log.
        if not op.get("model_id"):  # a retry after a lost server reuses it
            op["model_id"] = self.client.create_logged_model(experiment_id, name="embedder", source_run_id=run_id,
                                                             tags=tags).model_id
        with _global_tracking_uri(self.uri):
            Model.log(None, mlflow.pyfunc, name="embedder", run_id=run_id, model_id=op["model_id"],
                      loader_module="bgbias.tracking.served_model", data_path=str(folder / "data"), code_paths=[str(code)],
                      signature=signature, input_example=np.load(folder / "example.npy"),
                      pip_requirements=list(REQUIREMENTS))
            version = self._register(op["name"], op["alias"], op["model_id"], run_id, tags)
        log.info("logged the %s model: %s version %s (alias %s) in %.1f s", settings["mode"], op["name"], version,
                 op["alias"], time.perf_counter() - start)

    def _register(self, name: str, alias: str, model_id: str, run_id: str, tags: dict[str, str]) -> str:
        """A new version of `name` (created if absent) from a logged model; `alias` moves to it.
        Idempotent: a retry after a server lost before it answered finds the version it made
        (same logged model) instead of adding a second one. Called under `_global_tracking_uri`:
        the registry resolves the source through it."""
        try:
            self.client.create_registered_model(
                name, description="bgbias embedder: uint8 RGB images [B, H, W, 3] -> L2-normalised embeddings")
        except Exception:
            self.client.get_registered_model(name)  # created meanwhile by the other mode's training, else raises
        source = f"models:/{model_id}"
        made = [v for v in self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
                if v.source == source]
        version = made[0] if made else self.client.create_model_version(name, source, run_id=run_id, tags=tags,
                                                                          model_id=model_id)
        self.client.set_registered_model_alias(name, alias, str(version.version))
        return str(version.version)  # search results carry an int, created versions a str

    def _keep(self, op: dict) -> None:
        if op["op"] == "model" and not op.get("copy"):
            # Moved into the spool: the temporary folder goes when the command ends.
            folder = self._spool_root() / "files" / uuid.uuid4().hex
            folder.parent.mkdir(parents=True, exist_ok=True)
            op["path"] = op["copy"] = str(shutil.move(op["path"], folder))
        if op["op"] == "artifact" and not op.get("copy"):
            # Copied now: the file may be replaced (best.pt) or deleted (trial folders) before it can be sent.
            folder = self._spool_root() / "files" / uuid.uuid4().hex
            folder.mkdir(parents=True)
            op["path"] = str(Path(shutil.copy2(op["path"], folder)))
            op["copy"] = str(folder)
        self._pending.append(op)
        self._save_pending()

    def _flush(self) -> bool:
        """Send the kept operations in order; False (keeping the rest) while the server is away."""
        if probe(self.uri) is not None:
            return False
        while self._pending:
            op = self._pending[0]
            try:
                self._apply(op)
            except Exception:
                self._save_pending()  # keeps a run created meanwhile ('created')
                if probe(self.uri) is None:
                    raise
                return False
            self._pending.pop(0)
            if op.get("copy"):
                shutil.rmtree(op["copy"], ignore_errors=True)
        self._save_pending()
        log.info("tracking server %s answers again: sent the kept updates of run %s", redact(self.uri), self.run_id)
        return True

    def _spool_root(self) -> Path:
        if self._spool_dir is None:
            self._spool_dir = Path(tempfile.mkdtemp(prefix="bgbias-unsent-"))
        return self._spool_dir

    def _save_pending(self) -> None:
        if not self._pending:
            if self._spool_file is not None:
                self._spool_file.unlink(missing_ok=True)
                self._spool_file = None
            return
        if self._spool_file is None:
            self._spool_file = self._spool_root() / f"{uuid.uuid4().hex}.json"
        record = {"uri": self.uri, "host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id,
                  "ops": self._pending}
        atomic_write(self._spool_file, lambda tmp: tmp.write_text(json.dumps(record), encoding="utf-8"))


class _global_tracking_uri:
    """MLflow's model logging and loading read the process-wide tracking URI: set it to
    ours for the call, then put back what was there (the variable MLflow sets too)."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        import mlflow

        self.saved = (os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri())
        mlflow.set_tracking_uri(self.uri)

    def __exit__(self, *exc):
        import mlflow

        env, uri = self.saved
        mlflow.set_tracking_uri(uri)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def load_registered_model(model_uri: str, uri: str) -> tuple[Any, str]:
    """(pyfunc model, "<name>-v<version>") of `models:/NAME@ALIAS` or `models:/NAME/VERSION`
    in the store at `uri`; a name, alias or version that is not there is a one-line error."""
    import re

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/(\d+))", model_uri)
    if match is None:
        raise BgbiasError(f"--model {model_uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match.groups()
    client = MlflowClient(tracking_uri=uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise BgbiasError(f"--model {model_uri}: no registered model '{name}' in {redact(uri)} (`bgbias train` "
                          "registers bgbias-<dataset>-<loss>)") from None
    try:
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException:
        if alias:
            known = ", ".join(f"@{a}" for a in sorted(registered.aliases)) or "none"
        else:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            known = ", ".join(map(str, versions))
        raise BgbiasError(f"--model {model_uri}: '{name}' has no {'alias' if alias else 'version'} "
                          f"{alias or number} (it has {known})") from None
    with _global_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    return model, f"{name}-v{version.version}"


def send_unsent(spool_dir: Path, uri: str) -> int:
    """Send the updates that earlier commands kept for `uri` (those of live local processes
    are left to them); returns how many spool files were sent completely."""
    sent = 0
    for path in sorted(Path(spool_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("uri") != uri or (record.get("host") == socket.gethostname() and pid_alive(record.get("pid"))):
            continue
        claimed = path.with_name(f"{path.stem}.sending-{os.getpid()}")
        try:
            os.rename(path, claimed)  # one sender per file, even with several workers starting together
        except FileNotFoundError:
            continue
        tracker = MlflowTracker(uri, None, spool_dir)
        tracker.run_id, tracker._pending, tracker._spool_file = record.get("run_id"), record["ops"], claimed
        try:
            done = tracker._flush()
        except Exception as exc:
            failed = path.with_name(f"{path.stem}.failed")
            os.replace(claimed, failed)
            log.warning("could not send the kept updates in %s (%s); left as %s", path, exc, failed)
            continue
        if done:
            sent += 1
        else:
            os.replace(claimed, path)
    return sent


    return True
