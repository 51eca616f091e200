"""Optuna studies on the tiny project: resume, pruning, best-params file, MLflow parent and
child runs, two workers on one journal, a killed worker's trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import yaml
from optuna.trial import TrialState

from bgbias import tuning
from bgbias.config import load_params
from bgbias.engine.train import fit as real_fit
from bgbias.layout import Layout
from bgbias.tracking import MlflowTracker, NullTracker, tracking_uri
from tests.conftest import write_params

TUNE = {"train": {"iterations_per_epoch": 1}, "tune": {"n_trials": 3, "epochs": 2, "pruner": "none"}}


def _params(root, **tune):
    return load_params(write_params(root, {**TUNE, "tune": {**TUNE["tune"], **tune}}))


def _tune(root, params, tracker_factory=NullTracker):
    return tuning.tune(params, Layout(root), "triplet", tracker_factory, root / "params.yaml", progress=False)


def test_study_resumes_writes_best_params_and_logs_parent_and_child_runs(tiny_project):
    layout = Layout(tiny_project)
    trackers = lambda: MlflowTracker.for_project(tiny_project)  # noqa: E731
    first = _tune(tiny_project, _params(tiny_project), trackers)
    assert first["trials"] == 3 and first["states"]["COMPLETE"] == 3
    first_trial = tuning.load_study(_params(tiny_project), layout, "triplet").trials[0]
    assert first_trial.params == {"margin": 0.05}  # trial 0: the default value training would use
    before = {t.number: t.params for t in tuning.load_study(_params(tiny_project), layout, "triplet").trials}

    summary = _tune(tiny_project, _params(tiny_project, n_trials=5), trackers)
    study = tuning.load_study(_params(tiny_project), layout, "triplet")
    assert summary["trials"] == len(study.trials) == 5
    assert {t.number: t.params for t in study.trials if t.number < 3} == before  # nothing lost or redone

    tuned = yaml.safe_load(layout.tuned_params("synthetic", "triplet").read_text())
    assert tuned["val_map_at_r"] == study.best_value and tuned["trial"] == study.best_trial.number
    assert tuned["loss_params"] == {"margin": study.best_params["margin"]}
    low, high, _ = tuning.SEARCH_SPACES["triplet"]["margin"]
    assert all(low <= t.params["margin"] <= high for t in study.trials)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(tiny_project))
    experiment = client.get_experiment_by_name("synthetic-tuning")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.info.run_name == "study-triplet"]
    children = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(parents) == 1 and len(children) == 5  # the rerun continued the same parent run
    parent = parents[0]
    assert parent.data.metrics["best_val_map_at_r"] == study.best_value
    assert parent.data.params["search_space.margin"] == "[0.01, 0.5] log"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} >= {
        "plots/optimization_history.png"}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["state"] == "COMPLETE" and child.data.params["loss"] == "triplet"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_map_at_r")] == [0, 1, 2]

    # Training picks the tuned values up when asked to.
    params = load_params(write_params(tiny_project, {**TUNE, "loss": "triplet", "loss_params": {"source": "tuned"},
                                                     "train": {"epochs": 1, "iterations_per_epoch": 1}}))
    result = real_fit(params, layout, "base", progress=False)
    assert result["loss"] == "triplet"


def test_a_trial_with_a_bad_intermediate_value_is_pruned(tiny_project, monkeypatch):
    # The trainer reports 0.9 each epoch, except for trial 3, which reports 0.0 at epoch 1:
    # the median pruner (2 startup trials) must stop it there.
    def reporting_fit(params, layout, mode, tracker, progress, target):
        number = int(target.tags["trial"])
        for epoch in (1, 2):
            target.on_epoch(epoch, {"val_map_at_r": 0.0 if number == 3 else 0.9})
        return {"val_map_at_r": 0.9}

    monkeypatch.setattr(tuning, "fit", reporting_fit)
    params = _params(tiny_project, n_trials=5, pruner="median")
    summary = _tune(tiny_project, params)
    study = tuning.load_study(params, Layout(tiny_project), "triplet")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.COMPLETE]
    assert study.trials[3].intermediate_values == {1: 0.0}
    assert summary["states"]["PRUNED"] == 1


def _cli(root, *args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bgbias", "--params", str(root / "params.yaml"), *args]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def test_two_workers_share_one_journal_study(tiny_project):
    params = _params(tiny_project, n_trials=4)
    proc = _cli(tiny_project, "tune", "--loss", "triplet", "--workers", "2", "--no-track")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    study = tuning.load_study(params, Layout(tiny_project), "triplet")
    numbers = [t.number for t in study.trials]
    # Each worker stops once the study holds n_trials; two can start the last one together.
    assert 4 <= len(numbers) <= 5 and numbers == list(range(len(numbers)))
    assert all(t.state == TrialState.COMPLETE for t in study.trials), err[-4000:]
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(numbers)  # no duplicate trial
    assert {t.user_attrs["worker"].rpartition(":")[2] for t in study.trials}.__len__() == 2  # both worked


def test_a_killed_workers_trial_ends_as_fail_and_the_study_goes_on(tiny_project):
    params = _params(tiny_project, n_trials=3)
    write_params(tiny_project, {**TUNE, "tune": {"n_trials": 3, "epochs": 200, "pruner": "none"}})  # a long trial
    worker = _cli(tiny_project, "tune", "--loss", "triplet", "--worker-index", "0", "--no-track")
    layout = Layout(tiny_project)
    deadline = time.time() + 120
    while time.time() < deadline:
        journal = layout.tune_dir("synthetic", "triplet") / "study.journal"
        if journal.is_file() and any(t.state == TrialState.RUNNING and "worker" in t.user_attrs
                                     for t in tuning.load_study(params, layout, "triplet").trials):
            break
        time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    write_params(tiny_project, {**TUNE, "tune": {"n_trials": 3, "epochs": 1, "pruner": "none"}})
    tuning.run_worker(_params(tiny_project, epochs=1), layout, "triplet", NullTracker)
    study = tuning.load_study(params, layout, "triplet")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]


def test_search_spaces_cover_the_papers_values():
    from bgbias.loss_params import PAPER

    for per_loss in PAPER.values():
        for loss, values in per_loss.items():
            for name, value in values.items():
                low, high, _ = tuning.SEARCH_SPACES[loss][name]
                assert low <= value <= high, (loss, name, value)
    assert optuna.__version__.startswith("5.")
