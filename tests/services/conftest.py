"""Real services on loopback: a throwaway PostgreSQL cluster (initdb/pg_ctl in a temp
folder, a free port on 127.0.0.1; as root run as `nobody`) and `mlflow server` on it with
the artifact proxy. Skipped, saying why, where the PostgreSQL binaries are missing
(`.ci/run` installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bgbias.tracking.local_services import LocalPostgres, MlflowServer, postgres_bin_dir


@pytest.fixture(scope="session")
def postgres():
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql-15 or set PG_BIN")
    root = Path(tempfile.mkdtemp(prefix="bgbias-pg-"))
    root.chmod(0o711)  # as root the cluster runs as `nobody`, which must be able to enter it
    cluster = LocalPostgres(root / "cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def start_server(postgres: LocalPostgres, database: str, folder: Path, port: int | None = None) -> MlflowServer:
    return MlflowServer(postgres.create_database(database), folder / "artifacts", port=port,
                        log_path=folder / "mlflow-server.log").start()


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    server = start_server(postgres, "mlflow", tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


def bgbias(root: Path, *args: str, **popen) -> subprocess.Popen:
    """`bgbias --params <root>/params.yaml ...` in its own process, as a worker machine would run it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bgbias", "--params", str(root / "params.yaml"), *args]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)
