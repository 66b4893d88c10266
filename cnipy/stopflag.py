"""A stop request that a signal handler may raise.

``threading.Event`` is not safe for that: a handler runs in the main thread between two bytecodes, possibly while
that thread is inside ``Event.wait`` holding the Event's non-reentrant lock (taken on entry and exit), and
``Event.set`` in the handler then waits for that lock forever. ``StopFlag.set`` takes no lock: it sets a flag and
writes a byte to a pipe, and ``wait`` is a ``select`` on the pipe, so every waiter in every thread wakes. Once
set, it stays set.
"""

from __future__ import annotations

import contextlib
import os
import select


class StopFlag:
    def __init__(self) -> None:
        self._set = False
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        self._set = True
        with contextlib.suppress(OSError):  # full (already woken) or closed: the flag is what counts
            os.write(self._w, b"x")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or ``timeout`` seconds pass; returns whether it is set."""
        if not self._set:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile
                select.select([self._r], [], [], timeout)
        return self._set

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._r = self._w = -1

    def __del__(self) -> None:
        if self._r >= 0:
            self.close()
