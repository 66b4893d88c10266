"""An in-memory `Store` with the disk store's semantics, for tests and for callers that keep state elsewhere."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from cnipy.ipam.ranges import IPAddress
from cnipy.ipam.store import Owner


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.reserved: dict[IPAddress, Owner | None] = {}
        self.last: dict[int, IPAddress] = {}
        self.lock_depth = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            self.lock_depth += 1
            try:
                yield
            finally:
                self.lock_depth -= 1

    def _require_lock(self) -> None:
        # The disk store would race without the lock; the fake makes that a loud failure in tests.
        if self.lock_depth == 0:
            raise AssertionError("store used without holding its lock")

    def reserve(self, owner: Owner, ip: IPAddress, range_id: int) -> bool:
        self._require_lock()
        if ip in self.reserved:
            return False
        self.reserved[ip] = owner
        self.last[range_id] = ip
        return True

    def last_reserved(self, range_id: int) -> IPAddress | None:
        self._require_lock()
        return self.last.get(range_id)

    def release(self, ip: IPAddress) -> None:
        self._require_lock()
        self.reserved.pop(ip, None)

    def allocations(self) -> Mapping[IPAddress, Owner | None]:
        self._require_lock()
        return dict(self.reserved)
