"""Lab files are private: directories 0700, files 0600, written atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnipy.lab.errors import LabError
from cnipy.statefile import write_atomic

LOCK_TIMEOUT = 60.0  # how long `up` or `down` waits for another command working on the same lab


def write_private(path: Path, text: str) -> None:
    private_dir(path.parent)
    write_atomic(path, text)


def write_json(path: Path, data: Any) -> None:
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def private_dir(path: Path) -> Path:
    """mkdir -p with every directory it creates 0700 (Path.mkdir gives parents the umask's mode)."""
    if not path.is_dir():
        private_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    return path


@contextlib.contextmanager
def locked(state_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the lab's lock (flock on state_dir/.lock) so that `up` and `down` of one lab never interleave.
    The kernel drops the lock when its holder dies, so a killed `up` never blocks a later `down`."""
    private_dir(state_dir)
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + (LOCK_TIMEOUT if timeout is None else timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another `cnipy lab` command is working on {state_dir.name} "
                                   f"(it holds {state_dir / '.lock'}); wait for it or stop it") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
