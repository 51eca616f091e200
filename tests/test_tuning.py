"""Optuna studies on the tiny project: resume, pruning, best-params file, MLflow parent and
child runs, two workers on one journal, a killed worker's trial, study identity (a changed
configuration opens a new study), sampler seeds of continued studies, failed trials."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from bgbias import cli
from bgbias.studies import tuning
from bgbias.core.config import load_params
from bgbias.engine.train import fit as real_fit
from bgbias.core.errors import BgbiasError
from bgbias.core.layout import Layout
from bgbias.tracking.mlflow import MlflowTracker, NullTracker, tracking_uri
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
    assert tuned["study"] == study.study_name and tuned["fingerprint"].startswith(study.study_name.split("-")[-1])
    assert tuned["finished_trials"] == 5 and "lr" not in tuned  # lr not searched: not written
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


def _fast_fit(value=lambda number: 0.5, fail=lambda number: False):
    """A stand-in for fit(): reports `value(trial)` for each epoch, or raises for `fail(trial)`."""
    def fit(params, layout, mode, tracker, progress, target):
        number = int(target.tags["trial"])
        tracker.start("e", "r", {}, {})
        if fail(number):
            raise RuntimeError(f"trial {number} broke")
        for epoch in range(1, params.train.epochs + 1):
            target.on_epoch(epoch, {"val_map_at_r": value(number)})
        return {"val_map_at_r": value(number)}

    return fit


def test_a_killed_workers_trial_ends_as_fail_its_run_failed_and_the_study_goes_on(tiny_project, monkeypatch):
    long_trials = {**TUNE, "tune": {"n_trials": 3, "epochs": 200, "pruner": "none"}}
    params = load_params(write_params(tiny_project, long_trials))
    MlflowTracker.for_project(tiny_project)  # the store exists before the worker opens it, as under `tune`
    worker = _cli(tiny_project, "tune", "--loss", "triplet", "--worker-index", "0")  # tracked in MLflow
    layout = Layout(tiny_project)
    deadline = time.time() + 300
    while time.time() < deadline:
        journal = layout.tune_dir("synthetic", "triplet") / "study.journal"
        if journal.is_file() and any(t.state == TrialState.RUNNING and tuning.RUN_ATTR in t.user_attrs
                                     for t in tuning.load_study(params, layout, "triplet").trials):
            break
        time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    run_id = tuning.load_study(params, layout, "triplet").trials[0].user_attrs[tuning.RUN_ATTR]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(tiny_project))
    assert client.get_run(run_id).info.status == "RUNNING"  # the killed process could not end it
    monkeypatch.setattr(tuning, "fit", _fast_fit())
    tuning.run_worker(params, layout, "triplet", lambda: MlflowTracker.for_project(tiny_project))
    study = tuning.load_study(params, layout, "triplet")
    # The dead trial is FAIL and replaced: 3 trials finished besides it.
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["state"] == "FAIL"


def test_a_failed_trial_is_replaced_and_failures_in_a_row_stop_the_worker(tiny_project, monkeypatch):
    params = _params(tiny_project, n_trials=3)
    layout = Layout(tiny_project)
    monkeypatch.setattr(tuning, "fit", _fast_fit(fail=lambda number: number == 1))
    summary = _tune(tiny_project, params)
    study = tuning.load_study(params, layout, "triplet")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert study.trials[1].user_attrs["error"] == "RuntimeError: trial 1 broke"
    assert summary["finished_trials"] == 3 and summary["states"]["FAIL"] == 1

    monkeypatch.setattr(tuning, "fit", _fast_fit(fail=lambda number: True))
    with pytest.raises(BgbiasError, match="3 trials in a row failed, the last with RuntimeError: trial 6 broke"):
        _tune(tiny_project, _params(tiny_project, n_trials=5))
    assert [t.state for t in tuning.load_study(params, layout, "triplet").trials][4:] == [TrialState.FAIL] * 3


def test_a_continued_study_does_not_replay_its_proposals(tiny_project, monkeypatch):
    # A rerun used to build its TPE sampler from the same seed: its first proposals were
    # the first call's again (8 trials covered 4 distinct margins).
    monkeypatch.setattr(tuning, "fit", _fast_fit(value=lambda number: 0.1 * number))
    layout = Layout(tiny_project)
    for n_trials in (3, 5, 7):
        _tune(tiny_project, _params(tiny_project, n_trials=n_trials))
    margins = [t.params["margin"] for t in tuning.load_study(_params(tiny_project), layout, "triplet").trials]
    assert len(margins) == 7 and len(set(margins)) == 7, margins


def test_a_changed_configuration_opens_a_new_study_and_keeps_the_old(tiny_project, monkeypatch, capsys):
    monkeypatch.setattr(tuning, "fit", _fast_fit())
    layout = Layout(tiny_project)
    first = _tune(tiny_project, _params(tiny_project))
    assert _tune(tiny_project, _params(tiny_project))["study"] == first["study"]  # nothing changed: nothing new

    changed = load_params(write_params(tiny_project, {**TUNE, "train": {**TUNE["train"], "lr": 3e-4}}))
    second = _tune(tiny_project, changed)
    assert second["study"] != first["study"] and second["trials"] == second["finished_trials"] == 3  # new trials ran
    tuned = yaml.safe_load(layout.tuned_params("synthetic", "triplet").read_text())
    assert tuned["study"] == second["study"] and tuned["finished_trials"] == 3 and tuned["val_map_at_r"] == 0.5
    assert tuned["fingerprint"] == tuning.study_fingerprint(changed, layout, "triplet")

    # Each input of the objective is part of the identity.
    base = tuning.study_fingerprint(changed, layout, "triplet")
    for overrides in ({"seed": 4}, {"model": {"embedding_dim": 64}},
                      {"loss_params": {"overrides": {"triplet": {"margin": 0.2}}}}, {"tune": {"epochs": 3}}):
        assert tuning.study_fingerprint(load_params(write_params(tiny_project, {**TUNE, "train": {
            **TUNE["train"], "lr": 3e-4}, **overrides})), layout, "triplet") != base, overrides
    assert tuning.study_fingerprint(changed, layout, "contrastive") != base
    with open(layout.index_csv("synthetic"), "a") as f:
        f.write("\n")
    assert tuning.study_fingerprint(changed, layout, "triplet") != base

    rows = tuning.list_studies(changed, layout)
    assert {r["study"] for r in rows} == {first["study"], second["study"]}
    assert cli.main(["--params", str(tiny_project / "params.yaml"), "tune", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and all("3 complete, 0 pruned, 0 failed" in line for line in listed)


def test_a_killed_worker_makes_the_command_fail_with_one_line(tiny_project, monkeypatch, capsys):
    monkeypatch.setattr(tuning, "fit", _fast_fit())
    real_commands = tuning.worker_commands

    def one_worker_dies(params_file, loss, workers, track):
        commands = real_commands(params_file, loss, workers, track)
        assert len(commands) == 2 and commands[1][commands[1].index("--worker-index") + 1] == "1"
        return [[sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                [sys.executable, "-c", "pass"]]

    monkeypatch.setattr(tuning, "worker_commands", one_worker_dies)
    _params(tiny_project, n_trials=1)  # writes params.yaml
    code = cli.main(["--params", str(tiny_project / "params.yaml"), "tune", "--loss", "triplet", "--workers", "2",
                     "--no-track"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: study synthetic-triplet-") and "worker 0: killed by SIGKILL" in err[0]


def test_search_spaces_cover_the_papers_values():
    from bgbias.core.loss_params import PAPER

    for per_loss in PAPER.values():
        for loss, values in per_loss.items():
            for name, value in values.items():
                low, high, _ = tuning.SEARCH_SPACES[loss][name]
                assert low <= value <= high, (loss, name, value)
    assert optuna.__version__.startswith("5.")


def _journal_with_two_trials(root):
    """outputs/tune/synthetic/triplet/study.journal: a study whose 2 trials completed."""
    path = Layout(root).tune_dir("synthetic", "triplet") / "study.journal"
    path.parent.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    optuna.create_study(storage=storage, study_name="old").optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    return path


def _trials(params, root):
    (row,) = tuning.list_studies(params, Layout(root))
    return row["complete"], row["running"]


def test_a_journal_whose_writer_died_mid_record_is_repaired_with_a_warning(tmp_path, caplog):
    """Optuna skips a cut-short last record, but the next append glued onto it used to make
    the study unreadable for good (JSONDecodeError on every read)."""
    params, path = _params(tmp_path), _journal_with_two_trials(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-15])  # the last record (trial 1 completes) cut short
    assert _trials(params, tmp_path) == (1, 1)
    assert path.read_bytes() == whole[:whole.rstrip(b"\n").rfind(b"\n") + 1]
    assert "dropped an unfinished last record" in caplog.text
    storage = tuning._open_storage(params, path)
    optuna.load_study(study_name="old", storage=storage).optimize(lambda t: 0.5, n_trials=1)  # an append
    assert _trials(params, tmp_path) == (2, 1)


@pytest.mark.parametrize("line", [b"\x00\xff garbage\n", b'{"trial_id": 0}\n', b"[1, 2]\n"])
def test_a_damaged_journal_line_is_a_one_line_error(tmp_path, line):
    # Not JSON, or JSON without an operation (Optuna would fail on it with a KeyError).
    params, path = _params(tmp_path), _journal_with_two_trials(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [line] + lines[2:]))
    with pytest.raises(BgbiasError, match=re.escape(f"{path}:3: not an Optuna journal record; move the file aside")):
        tuning.list_studies(params, Layout(tmp_path))


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_tune_refuses_fewer_than_one_worker_before_the_study_exists(tmp_path, monkeypatch, capsys, workers):
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["tune", "--workers", workers, "--no-track"]) == 2
    assert capsys.readouterr().err == f"error: --workers must be >= 1 (got {workers})\n"
    assert not (tmp_path / "outputs").exists()
