"""host-local IPAM: a pure allocator over a `Store`, the reference-compatible disk store and an in-memory fake.

    ranges     Range / RangeSet: parsing, canonical defaults, round-robin candidate order
    config     IPAMConfig: every host-local option, validated
    allocator  Allocator: allocate / release / held / missing / collect (GC) / usage (STATUS)
    store      the Store protocol and Owner (what a reservation file says)
    disk       DiskStore: <dataDir>/<network>/<address> files, last_reserved_ip.N, flock'd `lock`
    memory     MemoryStore: the fake, same semantics
    dns        resolv.conf -> DNS
"""

from typing import TYPE_CHECKING, Any

from cnipy.ipam.allocator import Allocator, Usage
from cnipy.ipam.config import IPAMConfig, load
from cnipy.ipam.disk import DEFAULT_DATA_DIR, DiskStore
from cnipy.ipam.ranges import Range, RangeSet
from cnipy.ipam.store import Owner, Store

if TYPE_CHECKING:
    from cnipy.ipam.memory import MemoryStore


def __getattr__(name: str) -> Any:
    # The fake (and the threading module it needs) is not loaded on a plugin call.
    if name == "MemoryStore":
        from cnipy.ipam.memory import MemoryStore

        return MemoryStore
    raise AttributeError(name)

__all__ = ["DEFAULT_DATA_DIR", "Allocator", "DiskStore", "IPAMConfig", "MemoryStore", "Owner", "Range",
           "RangeSet", "Store", "Usage", "load"]
