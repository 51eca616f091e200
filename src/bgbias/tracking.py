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
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from bgbias.files import atomic_write
from bgbias.process_guard import pid_alive
from bgbias.services import is_server, probe, redact, require

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

    def _keep(self, op: dict) -> None:
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
            import tempfile

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
