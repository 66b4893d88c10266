"""The allocator's only side effect: a `Store` of reservations (one owner per address) behind a lock.

`DiskStore` is the real one (the reference host-local's on-disk layout); `MemoryStore` is a fake with the same
semantics for tests. Both record, per address, the owner that reserved it, and per range set the address reserved
last (for round robin).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from cnipy.ipam.ranges import IPAddress

LINE_BREAK = "\r\n"  # between container ID and interface name in a reservation, as the reference writes it


@dataclass(frozen=True)
class Owner:
    """Who holds an address. `ifname` is None for files written by pre-0.8 reference plugins (container ID only)."""

    container_id: str
    ifname: str | None

    def encode(self) -> bytes:
        if self.ifname is None:
            return self.container_id.encode()
        return f"{self.container_id}{LINE_BREAK}{self.ifname}".encode()

    @classmethod
    def decode(cls, data: bytes) -> Owner | None:
        """The reference compares whitespace-trimmed contents; an empty or undecodable file has no owner."""
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        if not text:
            return None
        cid, sep, ifname = text.partition(LINE_BREAK)
        return cls(cid, ifname) if sep else cls(cid, None)

    def matches(self, container_id: str, ifname: str) -> bool:
        """Exact match (container ID and interface)."""
        return self.container_id == container_id.strip() and self.ifname == ifname

    def matches_legacy(self, container_id: str) -> bool:
        """A pre-0.8 file: the container ID alone."""
        return self.ifname is None and self.container_id == container_id.strip()


class Store(Protocol):
    def locked(self) -> AbstractContextManager[None]:
        """Hold the store's exclusive lock (re-entrant within one store object)."""

    def reserve(self, owner: Owner, ip: IPAddress, range_id: int) -> bool:
        """Record `owner` for `ip` unless the address is taken; remember `ip` as range set `range_id`'s last."""

    def last_reserved(self, range_id: int) -> IPAddress | None: ...

    def release(self, ip: IPAddress) -> None:
        """Forget the reservation of `ip`; releasing a free address is not an error."""

    def allocations(self) -> Mapping[IPAddress, Owner | None]:
        """Every reserved address with its owner (None: a file with no readable owner, e.g. a crashed writer)."""
