"""Address ranges and range sets, parsed and canonicalised the way the reference host-local does it.

A `Range` is one subnet with an inclusive [start, end] and a gateway that is never handed out. A `RangeSet` is a
list of ranges of one family that one allocation draws from (one address per range set per container); a config
has several range sets for dual stack.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cnipy.cni.errors import InvalidConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: object, what: str) -> IPAddress:
    """A single address as the reference reads one: an IPv4-mapped IPv6 address counts as IPv4; no zone."""
    if not isinstance(value, str) or not value or "%" in value or len(value) > 64:
        raise InvalidConfig(f"{what} is not an IP address", repr(value)[:80])
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidConfig(f"{what} is not an IP address", repr(value)[:80]) from exc
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip_maybe_prefix(value: object, what: str) -> IPAddress:
    """`10.0.0.5` or `10.0.0.5/24` (requested addresses may carry a prefix, which is ignored)."""
    if isinstance(value, str) and "/" in value:
        addr, _, prefix = value.partition("/")
        if not prefix.isdigit() or len(prefix) > 3:
            raise InvalidConfig(f"{what} is not an IP address", repr(value)[:80])
        ip = parse_ip(addr, what)
        if int(prefix) > ip.max_prefixlen:
            raise InvalidConfig(f"{what} has an invalid prefix length", repr(value)[:80])
        return ip
    return parse_ip(value, what)


def parse_subnet(value: object, what: str) -> tuple[IPAddress, int]:
    """'10.1.0.0/24' -> (address, prefix length); only the CIDR form, as Go's net.ParseCIDR."""
    if not isinstance(value, str) or "/" not in value:
        raise InvalidConfig(f"{what} must be a CIDR such as 10.1.0.0/24", repr(value)[:80])
    addr, _, prefix = value.partition("/")
    if not prefix.isdigit() or len(prefix) > 3:
        raise InvalidConfig(f"{what} has an invalid prefix length", repr(value)[:80])
    ip = parse_ip(addr, what)
    if ":" in addr and ip.version == 4:  # ::ffff:a.b.c.d/n: the prefix counts IPv6 bits
        raise InvalidConfig(f"{what}: IPv4-mapped subnets are not supported", value[:80])
    if int(prefix) > ip.max_prefixlen:
        raise InvalidConfig(f"{what} has an invalid prefix length", value[:80])
    return ip, int(prefix)


@dataclass(frozen=True)
class Range:
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    @classmethod
    def from_json(cls, raw: object, where: str = "range") -> Range:
        if not isinstance(raw, Mapping):
            raise InvalidConfig(f"{where} must be an object")
        for key in ("rangeStart", "rangeEnd", "gateway"):
            if raw.get(key) not in (None, "") and not isinstance(raw.get(key), str):
                raise InvalidConfig(f"{where}.{key} must be a string")
        addr, prefix = parse_subnet(raw.get("subnet"), f"{where}.subnet")
        if prefix > addr.max_prefixlen - 2:
            raise InvalidConfig(f"network {addr}/{prefix} too small to allocate from")
        subnet = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        if subnet.network_address != addr:
            raise InvalidConfig(f"network has host bits set; for a /{prefix} the network address is "
                                f"{subnet.network_address}")
        first = subnet.network_address + 1
        # The reference's default end excludes the IPv4 broadcast address; IPv6 has none.
        last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
        gateway = _optional_ip(raw.get("gateway"), f"{where}.gateway") or first
        start = _optional_ip(raw.get("rangeStart"), f"{where}.rangeStart") or first
        end = _optional_ip(raw.get("rangeEnd"), f"{where}.rangeEnd") or last
        for key, ip in (("rangeStart", start), ("rangeEnd", end)):
            if ip.version != subnet.version or ip not in subnet:
                raise InvalidConfig(f"{key} {ip} not in network {subnet}")
        if gateway.version != subnet.version:
            raise InvalidConfig(f"gateway {gateway} is not of the family of {subnet}")
        if int(start) > int(end):
            raise InvalidConfig(f"rangeStart {start} is after rangeEnd {end}")
        return cls(subnet, start, end, gateway)

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.subnet.version and self.start <= ip <= self.end  # type: ignore[operator]

    def overlaps(self, other: Range) -> bool:
        return self.subnet.version == other.subnet.version and \
            self.start <= other.end and other.start <= self.end  # type: ignore[operator]

    def size(self) -> int:
        """How many addresses this range can hand out (the gateway is never handed out)."""
        n = int(self.end) - int(self.start) + 1
        return n - 1 if self.contains(self.gateway) else n

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def _optional_ip(value: object, what: str) -> IPAddress | None:
    return None if value in (None, "") else parse_ip(value, what)


@dataclass(frozen=True)
class RangeSet:
    ranges: tuple[Range, ...]

    @classmethod
    def from_json(cls, raw: object, where: str) -> RangeSet:
        if not isinstance(raw, list) or not raw:
            raise InvalidConfig(f"{where} must be a non-empty list of ranges")
        if len(raw) > 1024:
            raise InvalidConfig(f"{where} has too many ranges")
        ranges = tuple(Range.from_json(r, f"{where}[{i}]") for i, r in enumerate(raw))
        if len({r.subnet.version for r in ranges}) > 1:
            raise InvalidConfig(f"{where}: mixed address families")
        for i, r1 in enumerate(ranges):
            for r2 in ranges[i + 1:]:
                if r1.overlaps(r2):
                    raise InvalidConfig(f"{where}: subnets {r1} and {r2} overlap")
        return cls(ranges)

    @property
    def version(self) -> int:
        return self.ranges[0].subnet.version

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def size(self) -> int:
        return sum(r.size() for r in self.ranges)

    def candidates(self, last_reserved: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
        """Every address of the set once, gateways skipped, in the reference's round-robin order.

        Starts just after `last_reserved` when the set contains it (so a crash-looping container does not get the
        same address again until the whole set has been used), else at the first range's start; wraps around.
        """
        ranges = self.ranges
        first_idx, first_ip = 0, int(ranges[0].start)
        if last_reserved is not None:
            for i, r in enumerate(ranges):
                if r.contains(last_reserved):
                    if last_reserved == r.end:
                        first_idx = (i + 1) % len(ranges)
                        first_ip = int(ranges[first_idx].start)
                    else:
                        first_idx, first_ip = i, int(last_reserved) + 1
                    break
        # Ranges after the starting one, then the ones before it, then the head of the starting one.
        order = [(first_idx, first_ip, int(ranges[first_idx].end))]
        order += [(j % len(ranges), int(ranges[j % len(ranges)].start), int(ranges[j % len(ranges)].end))
                  for j in range(first_idx + 1, first_idx + len(ranges))]
        if first_ip > int(ranges[first_idx].start):
            order.append((first_idx, int(ranges[first_idx].start), first_ip - 1))
        make = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        for idx, lo, hi in order:
            r = ranges[idx]
            gw = int(r.gateway)
            for n in range(lo, hi + 1):
                if n != gw:
                    yield make(n), r

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def parse_range_sets(raw: Any, where: str) -> list[RangeSet]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidConfig(f"{where} must be a list of range sets")
    if len(raw) > 64:
        raise InvalidConfig(f"{where} has too many range sets")
    return [RangeSet.from_json(rs, f"{where}[{i}]") for i, rs in enumerate(raw)]
