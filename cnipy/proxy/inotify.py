"""A minimal inotify watcher (ctypes, no dependency): "did anything below these directories change?".

Idle polls cost one non-blocking read instead of a walk and a stat of every manifest. Events are not
interpreted beyond that: the caller re-reads what changed by its own means. New subdirectories are watched on
the next ``rewatch``. When inotify is unavailable (or its queue overflowed) the watcher says so and the caller
falls back to walking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable
from pathlib import Path

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


class Watcher:
    """Watches directories (not recursively by itself: ``rewatch`` adds the ones that appeared)."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int | None = fd

    def rewatch(self, directories: Iterable[Path]) -> None:
        """Watch these directories (again: watching a watched one is harmless). Vanished ones are skipped."""
        assert self.fd is not None
        for d in directories:
            if _lib().inotify_add_watch(self.fd, os.fsencode(d), MASK) < 0:
                err = ctypes.get_errno()
                if err not in (2, 20):  # ENOENT, ENOTDIR: gone meanwhile; the next walk sees that
                    raise OSError(err, f"inotify_add_watch {d}: {os.strerror(err)}")

    def pending(self) -> bool:
        """Drain the queue: True when any event arrived since the last call (an overflow counts as one)."""
        assert self.fd is not None
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            if not data:
                return seen
            seen = True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()
