"""A tracking server or database that is not there: one line naming the URI, within the
probe's timeout, never a traceback or a hang."""

from __future__ import annotations

import socket
import time

import pytest

from bgbias.core.errors import BgbiasError
from bgbias.tracking.local_services import free_port
from bgbias.tracking.services import probe, redact, require
from tests.conftest import write_params
from tests.services.conftest import bgbias


def _one_line_error(proc, timeout=120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no traceback, no log chatter
    return lines[0]


def test_train_with_an_unreachable_tracking_server_fails_at_start_in_one_line(tmp_path):
    port = free_port()  # nothing listens there
    write_params(tmp_path, {"tracking": {"uri": f"http://127.0.0.1:{port}"}})
    started = time.monotonic()
    line = _one_line_error(bgbias(tmp_path, "train", "--mode", "base"))
    assert line == f"error: tracking.uri: http://127.0.0.1:{port} unreachable (connection refused)"
    assert time.monotonic() - started < 60  # imports only: no retries against a dead server


def test_tune_with_an_unreachable_database_fails_at_start_in_one_line(tmp_path):
    port = free_port()
    write_params(tmp_path, {"tune": {"storage": f"postgresql://optuna:s3cret@127.0.0.1:{port}/optuna"}})
    line = _one_line_error(bgbias(tmp_path, "tune", "--loss", "triplet", "--no-track"))
    assert line == f"error: tune.storage: postgresql://optuna:***@127.0.0.1:{port}/optuna unreachable (Connection refused)"


def test_a_server_that_accepts_but_never_answers_times_out():
    with socket.socket() as silent:  # listens (the kernel accepts connections) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(BgbiasError, match=r"^tracking.uri: http://127.0.0.1:\d+ unreachable \(no answer \(timed out\)\)$"):
            require(uri, "tracking.uri", timeout=1.0)
        assert time.monotonic() - started < 5


def test_probe_reasons_and_redaction(tmp_path):
    assert probe(f"sqlite:///{tmp_path}/mlflow.db") is None
    assert probe(f"sqlite:///{tmp_path}/missing/mlflow.db") == f"folder {tmp_path}/missing does not exist"
    assert probe("http://no-such-host.invalid:5000").startswith("unknown host")
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("http://h:5000") == "http://h:5000"
