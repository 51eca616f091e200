"""The reliability suite's probe harness: run `bgbias` as a user would (a subprocess, in a
project folder beside an `outside/` folder holding a file that must never change), then
check the promises every probe makes: the exit code, a single `error: ...` line naming
the file or key, no traceback, and no file changed or created outside the stage's own
outputs (a before/after snapshot of the whole temp tree)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ASSETS, make_image

VICTIM_BYTES = b"precious: must never be overwritten"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (links not followed): kind and content hash or link target."""
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir",)
            else:
                entries[rel] = ("file", hashlib.sha1(path.read_bytes()).hexdigest())
    return entries


def changes(before: dict, after: dict) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


@dataclass
class Probe:
    """A temp tree: `project/` (params.yaml, data, outputs) and `outside/` (never touched)."""

    tmp: Path

    @property
    def project(self) -> Path:
        return self.tmp / "project"

    @property
    def outside(self) -> Path:
        return self.tmp / "outside"

    @property
    def victim(self) -> Path:
        return self.outside / "victim.png"

    def params(self, dataset: dict, **sections) -> Path:
        raw = {"dataset": "ds", "loss": "triplet", "assets_dir": str(ASSETS), "datasets": {"ds": dataset},
               "index": {"workers": 1}, **sections}
        path = self.project / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def snapshot(self) -> dict:
        return snapshot(self.tmp)

    def run(self, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "bgbias", "--params", str(self.project / "params.yaml"), *args]
        return subprocess.run(cmd, cwd=self.project, capture_output=True, timeout=timeout,
                              env={**os.environ, **(env or {})})


@pytest.fixture
def probe(tmp_path) -> Probe:
    p = Probe(tmp_path)
    p.project.mkdir()
    p.outside.mkdir()
    p.victim.write_bytes(VICTIM_BYTES)
    make_image(p.outside / "victim.jpg", size=(12, 12))  # an image a crafted path points at: its mask
    # would land on victim.png
    return p


def text(result: subprocess.CompletedProcess) -> tuple[str, str]:
    decode = lambda b: b.decode("utf-8", "backslashreplace")  # noqa: E731
    return decode(result.stdout), decode(result.stderr)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """Exit `code`, exactly one `error:` line, the last of stderr, holding every fragment;
    no traceback and never torch's advice to load with weights_only=False."""
    out, err = text(result)
    assert "Traceback" not in out + err, err
    assert "weights_only" not in out + err, err
    assert result.returncode == code, (result.returncode, err)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    out, err = text(result)
    assert result.returncode == 0 and "Traceback" not in out + err, err


def assert_only_changed(before: dict, after: dict, *allowed: str) -> None:
    """Nothing changed or appeared outside the `allowed` folders (paths relative to the temp
    root), apart from the folders that lead to them."""
    def allowed_change(p: str) -> bool:
        return any(p == a or p.startswith(a + "/") or (a.startswith(p + "/") and after.get(p) == ("dir",))
                   for a in allowed)

    unexpected = sorted(p for p in changes(before, after) if not allowed_change(p))
    assert unexpected == [], unexpected
