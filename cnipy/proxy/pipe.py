"""Feeding a rule loader (``nft -f -``, ``iptables-restore``) through a pipe."""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO

BATCH = 1 << 16


def write_batched(stream: IO[str], chunks: Iterable[str]) -> None:
    """Write ``chunks`` 64 kB at a time: fewer system calls, and fewer wake-ups of a reader waiting for more.
    BrokenPipeError (the reader stopped: it failed) is the caller's to handle."""
    buf: list[str] = []
    size = 0
    for chunk in chunks:
        buf.append(chunk)
        size += len(chunk)
        if size >= BATCH:
            stream.write("".join(buf))
            buf, size = [], 0
    stream.write("".join(buf))
