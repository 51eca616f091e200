"""Guards of the long stages (masks, train) against orphans and doubles.

- `hold_folder`: an exclusive lock on a stage's output folder, so a second process writing
  the same folder (e.g. a trainer left running by a killed `dvc repro`, and the one the next
  `dvc repro` starts) fails at once, naming the folder and the PID holding it. The lock is
  an flock on `.<name>.lock` beside the folder (inside it, DVC would count the file as part
  of the stage's output); the kernel drops it when its holder dies, however it dies, so a
  stale file never blocks. Only the process that writes takes it (rank 0 under torchrun).
- `pid_alive`: whether a process of this machine still runs (a dead writer's leftovers are
  taken over: unsent tracking updates, a killed tuning worker's trial).
- `die_with_parent`: on Linux the kernel sends this process SIGTERM when its parent exits.
  The CLI arms it for stage commands run by DVC (which sets DVC_STAGE, and whose `$SHELL -c`
  is bash or zsh, which run the command in place, so the parent is DVC itself): killing
  `dvc repro` then stops its stage. Not armed otherwise, so `nohup bgbias train &` survives
  its shell.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bgbias.core.errors import BgbiasError
from bgbias.core.files import remove_stale_temps

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def lock_file_of(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def hold_folder(folder: Path) -> Iterator[None]:
    """Hold the lock on `folder` for the duration; BgbiasError if another process has it.
    Holding it, temp files in the folder are a killed writer's: they are removed."""
    folder = Path(folder)
    lock_path = lock_file_of(folder)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "not yet written"
            raise BgbiasError(f"{folder} is being written by another process (PID {holder}); "
                              "wait for it or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if folder.is_dir():
            remove_stale_temps(folder)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiting process)


def die_with_parent() -> None:
    """Linux only (a no-op elsewhere): SIGTERM when the parent process exits."""
    # A parent that died before this call goes unnoticed; the folder lock still stops a double.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def pid_alive(pid: object) -> bool:
    """A process with this PID exists on this machine (another user's counts). This process
    itself counts as not alive: what it left behind is from an earlier life of its PID."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
