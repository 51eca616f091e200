"""Optuna tuning of each loss's hyperparameters per dataset; the only Optuna importer.

A study is named `<dataset>-<loss>-<fingerprint>`: the fingerprint covers everything a
trial's value depends on (the index, the masks' and the background pools' manifests, the
backbone weights, the model and trial-training config, the loss's overrides, the search
space, the seed), so a changed configuration opens a new study instead of reporting values
tuned for another one; old studies stay in the storage (`bgbias tune --list`). The
objective is the validation MAP@R of a `base` training with the trial budget
`tune.epochs`, reported every epoch to the pruner. Storage: an Optuna journal file under
`outputs/tune/<dataset>/<loss>/` (safe for several local processes, unlike SQLite) or any
RDB URL (`tune.storage`, e.g. PostgreSQL, for workers on several machines, with Optuna's
heartbeat failing the trials of dead workers). Rerunning continues the study until
`tune.n_trials` trials have finished (COMPLETE or PRUNED; a FAIL is replaced), with a TPE
seed drawn from (seed, worker, trials so far), so a continued study never replays its
earlier proposals. A local worker killed mid-trial leaves its trial RUNNING in the
journal; the next worker to start marks it FAIL (its PID is gone), ends its MLflow run
FAILED and goes on.

MLflow: a parent run per study and a nested child run per trial (our tracking module, by
hand: Optuna's MLflowCallback is deprecated); the parent gets the best params and the
optimisation-history and parameter-importance plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import yaml

from bgbias.core.config import LOSSES, LossParamsConfig, Params
from bgbias.core.seeds import Stream, derived_seed
from bgbias.engine.train import RunTarget, fit
from bgbias.core.errors import BgbiasError
from bgbias.core.files import atomic_write, write_text
from bgbias.data.inputs import training_inputs
from bgbias.core.layout import Layout
from bgbias.core.loss_params import LR_SEARCH_SPACE, SEARCH_SPACES
from bgbias.core.process_guard import pid_alive
from bgbias.tracking.mlflow import Tracker

log = logging.getLogger(__name__)

PARENT_RUN_ATTR = "mlflow_parent_run_id"
SET_UP_ATTR = "set_up"  # the creating worker has made the parent run and queued trial 0
SET_UP_WAIT = 120.0  # seconds another worker waits for that before going on
FINGERPRINT_ATTR = "fingerprint"
RUN_ATTR = "mlflow_run_id"  # a trial's MLflow child run, set as soon as the run exists
MAX_FAILURES_IN_A_ROW = 3  # a worker stops (and the command fails) after this many


def study_fingerprint(params: Params, layout: Layout, loss: str) -> str:
    """sha256 of everything a trial's value depends on."""
    trial = _trial_params(params, loss, {}, None)
    identity = {
        "dataset": params.dataset, "loss": loss, "seed": params.seed,
        "model": trial.model.model_dump(mode="json", exclude={"weights"}),
        "train": trial.train.model_dump(mode="json"),
        "loss_overrides": params.loss_params.overrides.get(loss, {}),
        "search_space": SEARCH_SPACES[loss], "lr_search_space": LR_SEARCH_SPACE if params.tune.search_lr else None,
        "inputs": training_inputs(params, layout),  # index, masks, backgrounds, weights
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def study_name(params: Params, layout: Layout, loss: str, fingerprint: str | None = None) -> str:
    fingerprint = fingerprint or study_fingerprint(params, layout, loss)
    return f"{params.dataset}-{loss}-{fingerprint[:12]}"


def _open_storage(params: Params, url_or_journal: str | Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if isinstance(url_or_journal, Path):
        url_or_journal.parent.mkdir(parents=True, exist_ok=True)
        check_journal(url_or_journal)
        return optuna.storages.JournalStorage(JournalFileBackend(str(url_or_journal)))
    return _rdb_storage(params)


def check_journal(path: Path) -> None:
    """Optuna's reader skips a last line without its newline (a write in progress), but the
    next record appended after it makes a bad line that fails every later read: a worker
    killed mid-write (writes hold Optuna's lock) would break the study for good. Holding
    that lock, such a tail is dropped with a warning (Optuna never counted it); a complete
    line that is not a record is a one-line error naming it."""
    from optuna.storages.journal import JournalFileSymlinkLock

    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        lock = JournalFileSymlinkLock(str(path))  # JournalFileBackend's default lock
        lock.acquire()
        try:
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                os.truncate(path, keep)
                log.warning("%s: dropped an unfinished last record (%d bytes) that a killed worker left",
                            path, len(data) - keep)
                data = data[:keep]
        finally:
            lock.release()
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            record = None
        if not (isinstance(record, dict) and "op_code" in record):
            raise BgbiasError(f"{path}:{number}: not an Optuna journal record; move the file aside to start "
                              "the study afresh (its trials are lost)")


def _storage(params: Params, layout: Layout, loss: str):
    return _open_storage(params, params.tune.storage or layout.tune_dir(params.dataset, loss) / "study.journal")


def _rdb_storage(params: Params, attempts: int = 3):
    import optuna
    from sqlalchemy.exc import DatabaseError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # "heartbeat_interval is an experimental feature"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(params.tune.storage, grace_period=params.tune.grace_period,
                                                  heartbeat_interval=params.tune.heartbeat_interval)
        except DatabaseError:
            # Workers started together on an empty database race to create Optuna's tables; the
            # loser's next attempt finds them.
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + random.random())


def _pruner(params: Params):
    import optuna

    if params.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if params.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=params.tune.epochs)
    return optuna.pruners.NopPruner()


def load_study(params: Params, layout: Layout, loss: str, worker: int = 0, fingerprint: str | None = None):
    """The study of the current configuration (created when new), with a TPE sampler seeded
    by (seed, worker, trials so far): parallel workers and later calls never replay the
    proposals of earlier ones."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fingerprint = fingerprint or study_fingerprint(params, layout, loss)  # (hashes every input: once per start)
    study = optuna.create_study(storage=_storage(params, layout, loss),
                                study_name=study_name(params, layout, loss, fingerprint), direction="maximize",
                                pruner=_pruner(params), load_if_exists=True)
    if FINGERPRINT_ATTR not in study.user_attrs:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    # Each worker and each continuation its own sampler seed, so workers do not propose the
    # same points and a continued study does not replay its first ones. Workers on several
    # machines (RDB storage) are all worker 0: their process identity tells them apart.
    streams = (worker, zlib.crc32(_worker_id().encode())) if params.tune.storage else (worker,)
    study.sampler = optuna.samplers.TPESampler(
        seed=derived_seed(params.seed, Stream.TUNE_SAMPLER, *streams, len(study.trials)))
    return study


def finished_trials(study) -> int:
    """Trials that count toward `tune.n_trials`: COMPLETE and PRUNED (a FAIL is replaced)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def list_studies(params: Params, layout: Layout) -> list[dict]:
    """Every study in the storage (the journals under outputs/tune/, or `tune.storage`),
    marking those of the current configuration."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    current = set()
    for loss in LOSSES:
        try:
            current.add(study_name(params, layout, loss))
        except BgbiasError:  # index, masks or backgrounds not made yet: nothing is current
            break
    sources = [params.tune.storage] if params.tune.storage else sorted(layout.outputs.glob("tune/*/*/study.journal"))
    rows = []
    for source in sources:
        storage = _open_storage(params, source)
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
            rows.append({"study": summary.study_name, "current": summary.study_name in current, **states,
                         "best_value": summary.best_trial.value if summary.best_trial else None,
                         "storage": str(source)})
    return rows


def suggest(trial, loss: str, search_lr: bool) -> tuple[dict[str, float], float | None]:
    values = {name: trial.suggest_float(name, low, high, log=log_scale)
              for name, (low, high, log_scale) in SEARCH_SPACES[loss].items()}
    lr = None
    if search_lr:
        low, high, log_scale = LR_SEARCH_SPACE
        lr = trial.suggest_float("lr", low, high, log=log_scale)
    return values, lr


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


    return True


def fail_dead_trials(study, new_tracker: Callable[[], Tracker] | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials of this host's workers that no longer exist, and end
    their MLflow child runs FAILED (a killed process could not)."""
    from optuna.trial import TrialState

    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not pid_alive(int(pid)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            failed.append(trial.number)
            log.warning("trial %d of a killed worker (pid %s) marked FAIL", trial.number, pid)
            run_id = trial.user_attrs.get(RUN_ATTR)
            if run_id and new_tracker is not None:
                tracker = new_tracker()
                tracker.attach(run_id)
                tracker.set_tags({"state": "FAIL"})
                tracker.finish("FAILED")
    return failed


class _TrialTracker:
    """A trial's tracker that writes its MLflow run id onto the trial as soon as the run
    exists, so a worker that finds the trial dead can end the run."""

    def __init__(self, tracker: Tracker, trial):
        self._tracker, self._trial = tracker, trial

    def start(self, *args, **kwargs):
        run_id = self._tracker.start(*args, **kwargs)
        if run_id:
            self._trial.set_user_attr(RUN_ATTR, run_id)
        return run_id

    def __getattr__(self, name):
        return getattr(self._tracker, name)


def _trial_params(params: Params, loss: str, values: dict[str, float], lr: float | None) -> Params:
    train = {"epochs": params.tune.epochs, "patience": params.tune.epochs}
    if lr is not None:
        train["lr"] = lr
    return params.model_copy(update={
        "loss": loss,
        "train": params.train.model_copy(update=train),
        "loss_params": LossParamsConfig(source="paper", overrides={loss: values}),
    })


def run_worker(params: Params, layout: Layout, loss: str, new_tracker: Callable[[], Tracker], worker: int = 0,
               progress: bool = False, fingerprint: str | None = None) -> None:
    """Run trials on the shared study until `tune.n_trials` of them have finished (COMPLETE
    or PRUNED); a failed trial is replaced, but MAX_FAILURES_IN_A_ROW failures stop the
    worker with an error."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study = load_study(params, layout, loss, worker, fingerprint)
    fail_dead_trials(study, new_tracker)
    if finished_trials(study) >= params.tune.n_trials:
        return
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    trials_dir = layout.tune_dir(params.dataset, loss) / study.study_name
    failures: list[str] = []  # errors of the failed trials in a row

    def objective(trial) -> float:
        trial.set_user_attr("worker", _worker_id())  # first: lets a later worker detect our death
        values, lr = suggest(trial, loss, params.tune.search_lr)
        tracker = _TrialTracker(new_tracker(), trial)
        out_dir = trials_dir / f"trial-{trial.number}"

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics["val_map_at_r"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        tags = {"trial": str(trial.number), "study": study.study_name}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        target = RunTarget(out_dir=out_dir, report=out_dir / "report.json", run_name=f"trial-{trial.number}",
                           experiment=f"{params.dataset}-tuning", tags=tags, on_epoch=on_epoch,
                           register_model=False)  # a trial's model is no release
        try:
            result = fit(_trial_params(params, loss, values, lr), layout, "base", tracker, progress=progress,
                         target=target)
        except optuna.TrialPruned:
            tracker.set_tags({"state": "PRUNED"})
            tracker.finish("KILLED")
            raise
        except BaseException as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            tracker.set_tags({"state": "FAIL"})
            tracker.finish("FAILED")
            raise
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)  # trial checkpoints are not kept
        tracker.set_tags({"state": "COMPLETE"})
        return result["val_map_at_r"]

    def stop_after_failures(study, trial) -> None:
        if trial.state != TrialState.FAIL:
            failures.clear()
            return
        failures.append(trial.user_attrs.get("error", "unknown error"))
        if len(failures) >= MAX_FAILURES_IN_A_ROW:
            study.stop()

    done = MaxTrialsCallback(params.tune.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(objective, n_trials=None, timeout=params.tune.timeout, catch=(Exception,),
                   callbacks=[done, stop_after_failures], gc_after_trial=True)
    if len(failures) >= MAX_FAILURES_IN_A_ROW:
        raise BgbiasError(f"study {study.study_name}: {len(failures)} trials in a row failed, the last with "
                          f"{failures[-1]}")


def tune(params: Params, layout: Layout, loss: str, new_tracker: Callable[[], Tracker], params_file: Path,
         workers: int | None = None, progress: bool = True, track: bool = True) -> dict:
    """Create or continue the study, run its workers, write the best params and the
    parent MLflow run. Returns a summary."""
    fingerprint = study_fingerprint(params, layout, loss)
    created = _create_study(params, layout, loss, fingerprint)
    study = load_study(params, layout, loss, fingerprint=fingerprint)
    if not created:  # workers started together on several machines: one parent run, one trial 0
        _wait_for_set_up(study)
    fail_dead_trials(study, new_tracker)
    parent = new_tracker()
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    space = {name: f"[{lo}, {hi}]{' log' if lg else ''}" for name, (lo, hi, lg) in SEARCH_SPACES[loss].items()}
    parent_params = {"study": study.study_name, "loss": loss, "dataset": params.dataset, "seed": params.seed,
                     "tune": params.tune.model_dump(mode="json"), "search_space": space,
                     "train": params.train.model_dump(mode="json"), "model": params.model.model_dump(mode="json")}
    parent_run_id = parent.start(f"{params.dataset}-tuning", f"study-{loss}", parent_params,
                                 {"study": study.study_name, "loss": loss, "dataset": params.dataset},
                                 resume_run_id=parent_run_id)
    if parent_run_id:
        study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)

    if not study.trials:
        # Trial 0 = the values training uses today, so the study shows what tuning gains.
        study.enqueue_trial(_start_point(params, layout, loss))
    study.set_user_attr(SET_UP_ATTR, True)
    workers = workers or params.tune.workers
    try:
        if workers == 1:
            run_worker(params, layout, loss, new_tracker, progress=progress, fingerprint=fingerprint)
            failed_workers = []
        else:
            failed_workers = _run_parallel(worker_commands(params_file, loss, workers, track), workers)
    except BaseException:
        parent.finish("FAILED")
        raise
    if not failed_workers:
        return _conclude(load_study(params, layout, loss, fingerprint=fingerprint), params, layout, loss, parent)
    codes = ", ".join(f"worker {i}: {_exit_status(code)}" for i, code in failed_workers)
    message = (f"study {study.study_name}: {len(failed_workers)} of {workers} tuning workers failed ({codes}); "
               "the study keeps their finished trials, run the command again to continue")
    try:
        summary = _conclude(load_study(params, layout, loss, fingerprint=fingerprint), params, layout, loss, parent)
    except BgbiasError as exc:
        raise BgbiasError(f"{message} ({exc})") from None
    raise BgbiasError(f"{message}; {summary['tuned_file']} holds the best so far")


def _create_study(params: Params, layout: Layout, loss: str, fingerprint: str) -> bool:
    """True in the one process that creates the study (the storage's unique name decides)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.create_study(storage=_storage(params, layout, loss), study_name=study_name(params, layout, loss, fingerprint),
                            direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def _wait_for_set_up(study) -> None:
    deadline = time.monotonic() + SET_UP_WAIT
    while SET_UP_ATTR not in study.user_attrs and not study.trials:  # (studies of older versions have trials)
        if time.monotonic() > deadline:
            log.warning("study %s: its creator did not finish setting it up in %.0f s; going on", study.study_name,
                        SET_UP_WAIT)
            return
        time.sleep(0.5)


def _start_point(params: Params, layout: Layout, loss: str) -> dict[str, float]:
    from bgbias.core.loss_params import resolve

    values = resolve(loss, params.selected.format, params.loss_params.overrides.get(loss))
    point = {name: min(max(values[name], low), high) for name, (low, high, _) in SEARCH_SPACES[loss].items()}
    if params.tune.search_lr:
        point["lr"] = params.train.lr
    return point


def worker_commands(params_file: Path, loss: str, workers: int, track: bool) -> list[list[str]]:
    return [[sys.executable, "-m", "bgbias", "--params", str(params_file), "tune", "--loss", loss,
             "--worker-index", str(i)] + ([] if track else ["--no-track"]) for i in range(workers)]


def _run_parallel(commands: list[list[str]], workers: int) -> list[tuple[int, int]]:
    """Run the worker processes; returns (worker index, exit code) of those that failed."""
    # The parent run was created above, so the MLflow store exists before workers open it.
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    processes = [subprocess.Popen(cmd, env=env) for cmd in commands]
    codes = [p.wait() for p in processes]
    return [(i, code) for i, code in enumerate(codes) if code != 0]


def _exit_status(code: int) -> str:
    if code < 0:
        import signal

        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _conclude(study, params: Params, layout: Layout, loss: str, parent: Tracker) -> dict:
    from optuna.trial import TrialState

    states = {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    summary = {"study": study.study_name, "trials": len(study.trials), "finished_trials": finished_trials(study),
               "states": states}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        parent.finish("FAILED")
        raise BgbiasError(f"study {study.study_name}: no trial completed ({states})")
    best = study.best_trial
    loss_values = {k: v for k, v in best.params.items() if k != "lr"}
    tuned = {"loss": loss, "dataset": params.dataset, "study": study.study_name,
             "fingerprint": study.user_attrs[FINGERPRINT_ATTR], "finished_trials": finished_trials(study),
             "trials": len(study.trials), "loss_params": loss_values, "val_map_at_r": best.value,
             "trial": best.number}
    if "lr" in best.params:  # searched (tune.search_lr): training uses it as train.lr
        tuned["lr"] = best.params["lr"]
    path = layout.tuned_params(params.dataset, loss)
    write_text(path, "# Best trial of `bgbias tune`; used when loss_params.source is 'tuned' (lr, when present, "
               "as train.lr).\n" + yaml.safe_dump(tuned, sort_keys=True))
    summary.update(best_value=best.value, best_params=best.params, best_trial=best.number, tuned_file=str(path))

    parent.log_metrics({"best_val_map_at_r": best.value, "trials": len(study.trials),
                        **{f"trials_{k.lower()}": v for k, v in states.items()}})
    parent.set_tags({f"best.{k}": str(v) for k, v in best.params.items()})
    parent.log_artifact(path, "tuned")
    for name, plot in _plots(study, layout.tune_dir(params.dataset, loss)).items():
        parent.log_artifact(plot, "plots")
    parent.finish()
    log.info("%s: best val MAP@R %.4f (trial %d) with %s; %s", study.study_name, best.value, best.number,
             best.params, states)
    return summary


def _plots(study, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    plots = {}
    for name, draw in (("optimization_history", ov.plot_optimization_history),
                       ("param_importances", ov.plot_param_importances)):
        try:
            with warnings.catch_warnings():  # "experimental" notices of optuna's matplotlib plots
                warnings.simplefilter("ignore")
                axes = draw(study)
        except Exception as exc:  # e.g. importances need >= 2 finished trials
            log.warning("no %s plot: %s", name, exc)
            continue
        figure = (axes[0] if hasattr(axes, "__len__") else axes).figure
        path = out_dir / f"{name}.png"
        figure.set_size_inches(7, 4)
        figure.tight_layout()
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
        plt.close(figure)
        plots[name] = path
    return plots
