"""Conntrack cleanup for the service proxy: delete stale UDP flows over netlink (no shell-out per entry).

UDP has no connection end, so a client that keeps sending to a service keeps its conntrack entry, and with it
the DNAT to an endpoint that may be gone. The proxy calls this when endpoints leave, or when a service that had
none gets its first (entries created meanwhile point nowhere). Runs in the caller's network namespace.
Both IP families: IPv4 and IPv6 entries are dumped apart (a conntrack dump is per family); addresses are
compared as ``ipaddress`` values, so the textual form of an IPv6 address does not matter.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address

from cnipy.netlink.errors import NetlinkError


def delete_udp_flows(*, reply_sources: Iterable[IPv4Address | IPv6Address] = (),
                     destinations: Iterable[tuple[IPv4Address | IPv6Address, int]] = (),
                     destination_ports: Iterable[int] = ()) -> int:
    """Delete UDP entries whose reply comes from one of ``reply_sources`` (flows DNATed to a removed endpoint),
    whose original destination is one of ``destinations`` (ip, port), or whose original destination port is
    one of ``destination_ports`` (NodePorts, on any local address). Returns how many were deleted."""
    sources = {ip_address(a) for a in reply_sources}
    dests = {(ip_address(a), p) for a, p in destinations}
    ports = set(destination_ports)
    if not sources and not dests and not ports:
        return 0
    # NodePorts are served on both families; addresses say which family their entries are in.
    versions = {4, 6} if ports else {a.version for a in sources} | {a.version for a, _ in dests}
    deleted = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        if (4 if family == socket.AF_INET else 6) in versions:
            deleted += _delete(family, sources, dests, ports)
    return deleted


def _delete(family: int, sources: set[IPv4Address | IPv6Address],
            dests: set[tuple[IPv4Address | IPv6Address, int]], ports: set[int]) -> int:
    from pyroute2 import NetlinkError as PyrouteNetlinkError
    from pyroute2.conntrack import Conntrack, NFCTAttrTuple

    deleted = 0
    try:
        with Conntrack(nfgen_family=family) as ct:
            stale = [e for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP))
                     if e.tuple_orig.dport in ports
                     or ip_address(e.tuple_reply.saddr) in sources
                     or (ip_address(e.tuple_orig.daddr), e.tuple_orig.dport) in dests]
            for entry in stale:
                try:
                    # Not ct.delete(): in pyroute2 0.7.12 it iterates the single reply and fails on None.
                    ct.entry("del", tuple_orig=entry.tuple_orig)
                    deleted += 1
                except PyrouteNetlinkError as exc:
                    if exc.code != 2:  # ENOENT: it expired meanwhile, which is what we wanted
                        raise
    except PyrouteNetlinkError as exc:
        raise NetlinkError(f"conntrack cleanup failed: {exc}", exc.code) from exc
    return deleted
