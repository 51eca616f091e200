"""Concurrent runs on one output folder, and orphans: a second trainer (or masks stage) on a
folder another process is writing fails at once, naming the folder and the PID holding it;
a stage started by DVC dies with its parent, which frees the folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgbias.core.errors import BgbiasError
from bgbias.core.process_guard import hold_folder, lock_file_of
from tests.conftest import write_params
from tests.reliability.conftest import Probe, assert_only_changed, assert_refused

TRAIN = ["train", "--mode", "base", "--no-track"]
LONG = {"train": {"epochs": 1000, "patience": 1000}}  # a training that runs until killed


def start(project: Path, args: list[str], env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bgbias", "--params", str(project / "params.yaml"), *args]
    return subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})})


def wait_for_holder(folder: Path, pid: int, timeout: float = 180) -> None:
    lock = lock_file_of(folder)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lock.is_file() and lock.read_text().strip() == str(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never took the lock on {folder}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("args, folder", [
    (TRAIN, "outputs/train/synthetic/base"),
    (["masks"], "outputs/masks/synthetic"),
], ids=["train", "masks"])
def test_second_writer_of_a_folder_fails_at_once(tiny_project, args, folder, assets_dir):
    write_params(tiny_project, LONG)
    first = start(tiny_project, args)
    try:
        wait_for_holder(tiny_project / folder, first.pid)
        probe = Probe(tiny_project.parent)
        before = probe.snapshot()
        started = time.time()
        second = probe.run(*args)
        assert_refused(second, str(tiny_project / folder), "being written by another process", f"PID {first.pid}")
        assert time.time() - started < 120
        assert first.poll() is None  # the first goes on
    finally:
        kill(first)
    # Only the first wrote, in its own folder: the second changed nothing.
    assert_only_changed(before, probe.snapshot(), f"project/{folder}", "project/reports")


def test_stage_run_by_dvc_dies_with_its_parent(tiny_project):
    write_params(tiny_project, LONG)
    folder = tiny_project / "outputs/train/synthetic/base"
    launcher = "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); p.wait()"
    cmd = [sys.executable, "-c", launcher, sys.executable, "-m", "bgbias", "--params",
           str(tiny_project / "params.yaml"), *TRAIN]
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "DVC_STAGE": "train@base"})
    child = int(parent.stdout.readline())
    try:
        wait_for_holder(folder, child)
        assert alive(child)  # still training: its death below is the parent's doing
        os.kill(parent.pid, signal.SIGKILL)  # like `kill -9` of dvc repro
        parent.wait()
        deadline = time.time() + 60
        while alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the trainer outlived its parent"
        # The dead trainer's lock is free again. Its main thread shows as a zombie while its
        # other threads (torch's) may still be exiting with the shared file table: allow them a moment.
        deadline = time.time() + 10
        while True:
            try:
                with hold_folder(folder):
                    break
            except BgbiasError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
