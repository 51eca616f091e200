"""A PostgreSQL cluster and an MLflow tracking server on 127.0.0.1, for `make server`
(`bgbias server`) and the tests of the shared-services path. Production setups run the
same two services from docker-compose.yml instead.

PostgreSQL refuses to run as root, so as root the cluster is created and run as the
unprivileged user `nobody` (`runuser`), in a folder owned by it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bgbias.core.errors import BgbiasError
from bgbias.tracking.services import probe

PG_USER = "postgres"  # the cluster's superuser (trust authentication, loopback only)
RUN_AS = "nobody"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin_dir() -> Path | None:
    """Folder of initdb/pg_ctl: $PG_BIN, the PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    candidates = [os.environ.get("PG_BIN", "")]
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                      if Path(p).parent.name.isdigit() else 0)
    candidates += reversed(versions)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


class LocalPostgres:
    """A cluster in `root` (created on first start, kept afterwards) on 127.0.0.1:`port`."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.port = port or free_port()
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise BgbiasError("PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql "
                              "(Debian: apt-get install postgresql-15) or set PG_BIN")
        self.bin = bin_dir
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise BgbiasError(f"{args[0]} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
                              f" (log: {self.root / 'postgres.log'})")
        return result

    def start(self) -> LocalPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            closed = [p for p in self.root.parents if not p.stat().st_mode & 0o001]
            if closed:
                raise BgbiasError(f"PostgreSQL runs as '{RUN_AS}' here (root), which cannot enter {closed[0]}: "
                                  f"chmod o+x it or put the cluster elsewhere")
            shutil.chown(self.root, RUN_AS)
        self.root.chmod(0o700)
        if not (self.data / "PG_VERSION").is_file():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-sync")
        # Loopback only; the socket in our own folder; fsync off: throwaway or trial data. Each
        # worker process holds a few SQLAlchemy pools (study, MLflow), hence more connections.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=400"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60",
                  "-o", options, "start")
        return self

    def create_database(self, name: str) -> str:
        """Create `name` unless it exists; return its SQLAlchemy/libpq URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)


class MlflowServer:
    """`mlflow server` on a database, serving artifacts from `artifacts` through its proxy."""

    def __init__(self, backend_uri: str, artifacts: Path, port: int | None = None, log_path: Path | None = None,
                 host: str = "127.0.0.1"):
        self.backend_uri = backend_uri
        self.artifacts = Path(artifacts).resolve()
        self.host = host
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else self.artifacts.parent / "mlflow-server.log"
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> MlflowServer:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
               "--host", self.host, "--port", str(self.port), "--workers", "1"]
        # No background job runner (MLflow's GenAI jobs): it would add several idle processes.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = self.log_path.open("ab")
        # Own process group: the server forks uvicorn workers, and stop() must end them all.
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while probe(self.uri, timeout=2) is not None:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise BgbiasError(f"mlflow server exited with code {self.process.returncode}: {tail} "
                                  f"(log: {self.log_path})")
            if time.monotonic() > deadline:
                self.stop()
                raise BgbiasError(f"mlflow server not answering on {self.uri} after {timeout:.0f} s "
                                  f"(log: {self.log_path})")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait()
        try:  # workers that outlived the parent
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
