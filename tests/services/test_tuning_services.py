"""`bgbias tune` workers on one PostgreSQL study, as on several machines (each worker its
own copy of the project), logging to a real MLflow tracking server."""

from __future__ import annotations

import shutil
import signal
import time

import optuna
from optuna.trial import TrialState

from bgbias.studies import tuning
from bgbias.core.config import load_params
from bgbias.core.layout import Layout
from tests.conftest import write_params
from tests.services.conftest import bgbias

TUNE = {"n_trials": 4, "epochs": 2, "pruner": "none", "heartbeat_interval": 1, "grace_period": 3}


def _machines(tiny_project, tmp_path, storage, tracking_uri, n=2):
    """`n` copies of the project, all pointing at one study and one tracking server."""
    roots = []
    for i in range(n):
        root = tmp_path / f"machine{i}"
        shutil.copytree(tiny_project, root)
        write_params(root, {"train": {"iterations_per_epoch": 1}, "tune": {**TUNE, "storage": storage},
                            "tracking": {"uri": tracking_uri}})
        roots.append(root)
    return roots


def _study(root):
    params = load_params(root / "params.yaml")
    return tuning.load_study(params, Layout(root), "triplet")


def _runs(server_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server_uri)
    experiment = client.get_experiment_by_name("synthetic-tuning")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.loss = 'triplet'") + [
        r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name.startswith("trial-")]
    return client, {r.info.run_id: r for r in runs}


def _wait(procs, timeout=600):
    results = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    return results


def test_two_workers_share_one_postgresql_study(postgres, mlflow_server, tiny_project, tmp_path):
    storage = postgres.create_database("optuna_two")
    roots = _machines(tiny_project, tmp_path, storage, mlflow_server.uri)
    procs = [bgbias(root, "tune", "--loss", "triplet") for root in roots]
    _wait(procs)

    study = _study(roots[0])
    numbers = [t.number for t in study.trials]
    # Each worker stops once the study holds n_trials; two can start the last one together.
    assert 4 <= len(numbers) <= 5 and numbers == list(range(len(numbers)))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(numbers)  # none duplicated
    pids = {t.user_attrs["worker"].rpartition(":")[2] for t in study.trials}
    assert pids == {str(p.pid) for p in procs}  # both machines worked

    client, runs = _runs(mlflow_server.uri)
    parent_id = study.user_attrs[tuning.PARENT_RUN_ATTR]
    parents = [r for r in runs.values() if r.info.run_name == "study-triplet"]
    children = [r for r in runs.values() if r.info.run_name.startswith("trial-")
                and r.data.tags.get("study") == study.study_name]
    assert [p.info.run_id for p in parents] == [parent_id]
    assert sorted(int(c.data.tags["trial"]) for c in children) == numbers
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id and child.info.status == "FINISHED"
        assert child.data.tags["state"] == "COMPLETE"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_map_at_r")] == [0, 1, 2]
    assert runs[parent_id].data.metrics["best_val_map_at_r"] == study.best_value


def test_a_worker_killed_mid_trial_is_failed_by_the_heartbeat(postgres, mlflow_server, tiny_project, tmp_path):
    storage = postgres.create_database("optuna_kill")
    survivor_root, victim_root = _machines(tiny_project, tmp_path, storage, mlflow_server.uri)
    survivor = bgbias(survivor_root, "tune", "--loss", "triplet")
    victim = bgbias(victim_root, "tune", "--loss", "triplet", "--no-track")
    deadline = time.monotonic() + 300
    victim_trial = None
    while victim_trial is None and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.2)
        # Never create the study here: the workers must find out which of them creates it.
        names = optuna.get_all_study_names(storage)  # a fresh database: the workers' one study
        if not names:
            continue
        running = optuna.load_study(study_name=names[0], storage=storage).get_trials(
            deepcopy=False, states=(TrialState.RUNNING,))
        victim_trial = next((t.number for t in running if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")),
                            None)
    assert victim_trial is not None, "the victim never ran a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _wait([survivor])

    study = _study(survivor_root)
    states = {t.number: t.state for t in study.trials}
    assert states[victim_trial] == TrialState.FAIL  # marked by the survivor, after the kill: here both
    # workers share a host, so the survivor sees the victim's PID gone and fails its trial at once;
    # across machines Optuna's heartbeat does it after tune.grace_period.
    assert [s for n, s in states.items() if n != victim_trial] == [TrialState.COMPLETE] * (len(states) - 1)
    assert len(states) >= TUNE["n_trials"]
    assert _runs(mlflow_server.uri)[1][study.user_attrs[tuning.PARENT_RUN_ATTR]].info.status == "FINISHED"
