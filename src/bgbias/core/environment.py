"""The machine and software a result was made with, for `reports/results.md`.

Figures are bit-identical when rerun on one machine with one install, not across CPUs
(vectorised float kernels differ by CPU model and thread count), so a reported number
names where it was computed.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# The distributions whose versions change the numbers (kernels, data pipeline, metrics).
PACKAGES = ("torch", "torchvision", "timm", "numpy", "pillow", "pytorch-metric-learning", "faiss-cpu",
            "onnxruntime", "captum", "scikit-image")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_environment() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "machine": platform.node() or "unknown",
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def environment_markdown(env: dict) -> str:
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items())
    return "\n".join([
        "## Environment",
        "",
        f"Made on `{env['machine']}`: {env['cpu']} ({env['cpu_cores']} cores, torch using {env['torch_threads']} "
        f"threads), GPU: {env['gpu'] or 'none'}; {env['os']}; Python {env['python']}.",
        "",
        f"Packages: {packages}.",
        "",
        "Rerunning on the same machine and install reproduces these figures bit for bit; another CPU model "
        "gives other figures (float kernels differ), so compare runs made on one machine.",
    ])
