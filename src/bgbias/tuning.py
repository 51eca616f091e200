"""Optuna tuning of each loss's hyperparameters per dataset; the only Optuna importer.

One study per dataset x loss (`<dataset>-<loss>`): the objective is the validation MAP@R
of a `base` training with the trial budget `tune.epochs`, reported every epoch to the
pruner; TPE sampler seeded. Storage: an Optuna journal file under
`outputs/tune/<dataset>/<loss>/` (safe for several local processes, unlike SQLite) or any
RDB URL (`tune.storage`, e.g. PostgreSQL, for workers on several machines, with Optuna's
heartbeat failing the trials of dead workers). Rerunning continues the study up to
`tune.n_trials` in total. A local worker killed mid-trial leaves its trial RUNNING in the
journal; the next worker to start marks it FAIL (its PID is gone) and goes on.

MLflow: a parent run per study and a nested child run per trial (our tracking module, by
hand: Optuna's MLflowCallback is deprecated); the parent gets the best params and the
optimisation-history and parameter-importance plots.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import yaml

from bgbias.config import LossParamsConfig, Params
from bgbias.engine.seeds import Stream, derived_seed
from bgbias.engine.train import RunTarget, fit
from bgbias.errors import BgbiasError
from bgbias.files import atomic_write, write_text
from bgbias.layout import Layout
from bgbias.loss_params import LR_SEARCH_SPACE, SEARCH_SPACES
from bgbias.tracking import Tracker

log = logging.getLogger(__name__)

PARENT_RUN_ATTR = "mlflow_parent_run_id"


def study_name(params: Params, loss: str) -> str:
    return f"{params.dataset}-{loss}"


def _storage(params: Params, layout: Layout, loss: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if params.tune.storage:
        return optuna.storages.RDBStorage(params.tune.storage, heartbeat_interval=60, grace_period=180)
    path = layout.tune_dir(params.dataset, loss) / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _pruner(params: Params):
    import optuna

    if params.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if params.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=params.tune.epochs)
    return optuna.pruners.NopPruner()


def load_study(params: Params, layout: Layout, loss: str, worker: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Each worker its own sampler seed, so parallel workers do not propose the same points.
    sampler = optuna.samplers.TPESampler(seed=derived_seed(params.seed, Stream.TUNE_SAMPLER, worker))
    return optuna.create_study(storage=_storage(params, layout, loss), study_name=study_name(params, loss),
                               direction="maximize", sampler=sampler, pruner=_pruner(params), load_if_exists=True)


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials of this host's workers that no longer exist."""
    from optuna.trial import TrialState

    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            failed.append(trial.number)
            log.warning("trial %d of a killed worker (pid %s) marked FAIL", trial.number, pid)
    return failed


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
               progress: bool = False) -> None:
    """Run trials on the shared study until it holds `tune.n_trials` trials (any state)."""
    import optuna
    from optuna.study import MaxTrialsCallback

    study = load_study(params, layout, loss, worker)
    fail_dead_trials(study)
    if len(study.trials) >= params.tune.n_trials:
        return
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    trials_dir = layout.tune_dir(params.dataset, loss)

    def objective(trial) -> float:
        trial.set_user_attr("worker", _worker_id())  # first: lets a later worker detect our death
        values, lr = suggest(trial, loss, params.tune.search_lr)
        tracker = new_tracker()
        out_dir = trials_dir / f"trial-{trial.number}"

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics["val_map_at_r"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        tags = {"trial": str(trial.number), "study": study.study_name}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        target = RunTarget(out_dir=out_dir, report=out_dir / "report.json", run_name=f"trial-{trial.number}",
                           experiment=f"{params.dataset}-tuning", tags=tags, on_epoch=on_epoch)
        try:
            result = fit(_trial_params(params, loss, values, lr), layout, "base", tracker, progress=progress,
                         target=target)
        except optuna.TrialPruned:
            tracker.set_tags({"state": "PRUNED"})
            tracker.finish("KILLED")
            raise
        except BaseException:
            tracker.set_tags({"state": "FAIL"})
            tracker.finish("FAILED")
            raise
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)  # trial checkpoints are not kept
        tracker.set_tags({"state": "COMPLETE"})
        return result["val_map_at_r"]

    study.optimize(objective, n_trials=None, timeout=params.tune.timeout, catch=(Exception,),
                   callbacks=[MaxTrialsCallback(params.tune.n_trials, states=None)], gc_after_trial=True)


def tune(params: Params, layout: Layout, loss: str, new_tracker: Callable[[], Tracker], params_file: Path,
         workers: int | None = None, progress: bool = True, track: bool = True) -> dict:
    """Create or continue the study, run its workers, write the best params and the
    parent MLflow run. Returns a summary."""
    study = load_study(params, layout, loss)
    fail_dead_trials(study)
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
    workers = workers or params.tune.workers
    if workers == 1:
        run_worker(params, layout, loss, new_tracker, progress=progress)
    else:
        _run_parallel(params_file, loss, workers, track)
    return _conclude(load_study(params, layout, loss), params, layout, loss, parent)


def _start_point(params: Params, layout: Layout, loss: str) -> dict[str, float]:
    from bgbias.loss_params import resolve

    values = resolve(loss, params.selected.format, params.loss_params.overrides.get(loss))
    point = {name: min(max(values[name], low), high) for name, (low, high, _) in SEARCH_SPACES[loss].items()}
    if params.tune.search_lr:
        point["lr"] = params.train.lr
    return point


def _run_parallel(params_file: Path, loss: str, workers: int, track: bool) -> None:
    # The parent run was created above, so the MLflow store exists before workers open it.
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    commands = [[sys.executable, "-m", "bgbias", "--params", str(params_file), "tune", "--loss", loss,
                 "--worker-index", str(i)] + ([] if track else ["--no-track"]) for i in range(workers)]
    processes = [subprocess.Popen(cmd, env=env) for cmd in commands]
    codes = [p.wait() for p in processes]
    if any(codes):
        log.warning("tuning workers exited with codes %s; the study keeps their finished trials", codes)


def _conclude(study, params: Params, layout: Layout, loss: str, parent: Tracker) -> dict:
    from optuna.trial import TrialState

    states = {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    summary = {"study": study.study_name, "trials": len(study.trials), "states": states}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        parent.finish("FAILED")
        raise BgbiasError(f"study {study.study_name}: no trial completed ({states})")
    best = study.best_trial
    loss_values = {k: v for k, v in best.params.items() if k != "lr"}
    tuned = {"loss": loss, "dataset": params.dataset, "loss_params": loss_values,
             "val_map_at_r": best.value, "trial": best.number, "trials": len(study.trials)}
    if "lr" in best.params:
        tuned["lr"] = best.params["lr"]
    path = layout.tuned_params(params.dataset, loss)
    write_text(path, "# Best trial of `bgbias tune`; used when loss_params.source is 'tuned'.\n"
               + yaml.safe_dump(tuned, sort_keys=True))
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
