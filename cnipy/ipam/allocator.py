"""The allocator: pure logic over a `Store` (no file, no clock, no environment).

One address per range set per (container, interface), round robin from each set's last reserved address as the
reference does, requested addresses honoured, gateways never handed out. Every public method holds the store's
lock for its whole read-modify-write, so an ADD over several range sets is all-or-nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cnipy.cni.errors import AddressExhausted, AddressUnavailable
from cnipy.cni.types import IPConfig
from cnipy.ipam.ranges import IPAddress, Range, RangeSet
from cnipy.ipam.store import Owner, Store


@dataclass(frozen=True)
class Usage:
    """How full one range set is."""

    range_set: RangeSet
    size: int
    used: int

    @property
    def free(self) -> int:
        return self.size - self.used


class Allocator:
    def __init__(self, store: Store, range_sets: Sequence[RangeSet]) -> None:
        self.store = store
        self.range_sets = tuple(range_sets)

    # -- ADD -----------------------------------------------------------------------------------------------------
    def allocate(self, container_id: str, ifname: str,
                 requested: Iterable[IPAddress] = ()) -> tuple[IPConfig, ...]:
        """Reserve one address in every range set; on any failure release what this call reserved."""
        owner = Owner(container_id, ifname)
        wanted = list(dict.fromkeys(requested))
        out: list[IPConfig] = []
        reserved: list[IPAddress] = []
        with self.store.locked():
            try:
                allocations = self.store.allocations()  # one directory scan per ADD
                taken = set(allocations)
                held = self._owned(container_id, ifname, allocations)
                for idx, rs in enumerate(self.range_sets):
                    ip = next((w for w in wanted if rs.contains(w)), None)
                    if ip is not None:
                        wanted.remove(ip)
                        r = self._reserve_requested(owner, ip, rs, idx)
                    else:
                        dup = next((h for h in held if rs.contains(h)), None)
                        if dup is not None:
                            raise AddressUnavailable(
                                f"{dup} has been allocated to {container_id}, duplicate allocation is not allowed")
                        ip, r = self._reserve_next(owner, rs, idx, taken)
                    reserved.append(ip)
                    taken.add(ip)
                    out.append(IPConfig(ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), r.gateway))
                if wanted:
                    raise AddressUnavailable("failed to allocate all requested IPs",
                                             " ".join(str(w) for w in wanted))
            except BaseException:
                for ip in reserved:
                    self.store.release(ip)
                raise
        return tuple(out)

    def _reserve_requested(self, owner: Owner, ip: IPAddress, rs: RangeSet, idx: int) -> Range:
        r = rs.range_for(ip)
        assert r is not None
        if ip == r.gateway:
            raise AddressUnavailable(f"requested ip {ip} is subnet's gateway")
        if not self.store.reserve(owner, ip, idx):
            raise AddressUnavailable(f"requested IP address {ip} is not available in range set {rs}")
        return r

    def _reserve_next(self, owner: Owner, rs: RangeSet, idx: int, taken: set[IPAddress]) -> tuple[IPAddress, Range]:
        for ip, r in rs.candidates(self.store.last_reserved(idx)):
            # `taken` only saves system calls: reserve() is the authority (O_EXCL on disk).
            if ip not in taken and self.store.reserve(owner, ip, idx):
                return ip, r
        raise AddressExhausted(f"no IP addresses available in range set: {rs}")

    # -- DEL, CHECK, GC, STATUS ----------------------------------------------------------------------------------
    def release(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Release what (container, ifname) holds; files of old plugins (container ID only) as a fallback."""
        with self.store.locked():
            allocations = self.store.allocations()
            mine = [ip for ip, o in allocations.items() if o is not None and o.matches(container_id, ifname)]
            if not mine:
                mine = [ip for ip, o in allocations.items() if o is not None and o.matches_legacy(container_id)]
            for ip in mine:
                self.store.release(ip)
            return sorted(mine, key=_sort_key)

    def held(self, container_id: str, ifname: str) -> list[IPAddress]:
        with self.store.locked():
            return self._owned(container_id, ifname, self.store.allocations())

    def missing(self, container_id: str, ifname: str) -> list[RangeSet]:
        """The range sets in which (container, ifname) holds no address (CHECK)."""
        held = self.held(container_id, ifname)
        return [rs for rs in self.range_sets if not any(rs.contains(ip) for ip in held)]

    def collect(self, valid: Collection[tuple[str, str]]) -> list[IPAddress]:
        """GC: release every address whose owner is not a valid (container ID, ifname) attachment."""
        valid_ids = {cid for cid, _ in valid}
        with self.store.locked():
            stale = [ip for ip, o in self.store.allocations().items()
                     if o is None or (o.ifname is None and o.container_id not in valid_ids)
                     or (o.ifname is not None and (o.container_id, o.ifname) not in valid)]
            for ip in stale:
                self.store.release(ip)
            return sorted(stale, key=_sort_key)

    def usage(self) -> list[Usage]:
        with self.store.locked():
            taken = self.store.allocations().keys()
        out = []
        for rs in self.range_sets:
            used = 0
            for ip in taken:
                r = rs.range_for(ip)
                if r is not None and ip != r.gateway:
                    used += 1
            out.append(Usage(rs, rs.size(), used))
        return out

    @staticmethod
    def _owned(container_id: str, ifname: str, allocations: Mapping[IPAddress, Owner | None]) -> list[IPAddress]:
        return sorted((ip for ip, o in allocations.items()
                       if o is not None and (o.matches(container_id, ifname) or o.matches_legacy(container_id))),
                      key=_sort_key)


def _sort_key(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))
