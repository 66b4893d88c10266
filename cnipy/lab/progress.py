"""Progress reports from `lab up`/`down`: a protocol, a silent one, and a terminal one for the CLI."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    def step(self, text: str) -> None:
        """A new step begins (the previous one is done)."""

    def count(self, done: int, total: int) -> None:
        """How far the current step is."""

    def finish(self) -> None:
        """All steps are done."""


class NullProgress:
    def step(self, text: str) -> None:
        return None

    def count(self, done: int, total: int) -> None:
        return None

    def finish(self) -> None:
        return None


class TerminalProgress:
    """One line per step with its duration; a live counter on a terminal, nothing extra when piped."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.current: str | None = None
        self.started = 0.0
        self.last_count = ""

    def step(self, text: str) -> None:
        self._end()
        self.current = text
        self.started = time.monotonic()
        self.last_count = ""
        if self.tty:
            self.out.write(f"  .. {text}")
            self.out.flush()

    def count(self, done: int, total: int) -> None:
        self.last_count = f" {done}/{total}"
        if self.tty and self.current is not None:
            self.out.write(f"\r  .. {self.current}{self.last_count}")
            self.out.flush()

    def finish(self) -> None:
        self._end()

    def _end(self) -> None:
        if self.current is None:
            return
        took = time.monotonic() - self.started
        line = f"  ok {self.current}{self.last_count} ({took:.1f}s)"
        self.out.write(f"\r\033[K{line}\n" if self.tty else f"{line}\n")
        self.out.flush()
        self.current = None
