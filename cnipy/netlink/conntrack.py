"""Conntrack cleanup for the service proxy: delete stale UDP flows over netlink (no shell-out per entry).

UDP has no connection end, so a client that keeps sending to a service keeps its conntrack entry, and with it
the DNAT to an endpoint that may be gone. The proxy calls this when endpoints leave, or when a service that had
none gets its first (entries created meanwhile point nowhere). Runs in the caller's network namespace.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address

from cnipy.netlink.errors import NetlinkError


def delete_udp_flows(*, reply_sources: Iterable[IPv4Address] = (),
                     destinations: Iterable[tuple[IPv4Address, int]] = (),
                     destination_ports: Iterable[int] = ()) -> int:
    """Delete UDP entries whose reply comes from one of ``reply_sources`` (flows DNATed to a removed endpoint),
    whose original destination is one of ``destinations`` (ip, port), or whose original destination port is
    one of ``destination_ports`` (NodePorts, on any local address). Returns how many were deleted."""
    sources = {str(a) for a in reply_sources}
    dests = {(str(a), p) for a, p in destinations}
    ports = set(destination_ports)
    if not sources and not dests and not ports:
        return 0
    from pyroute2 import NetlinkError as PyrouteNetlinkError
    from pyroute2.conntrack import Conntrack, NFCTAttrTuple

    deleted = 0
    try:
        with Conntrack() as ct:
            stale = [e for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP))
                     if e.tuple_reply.saddr in sources
                     or (e.tuple_orig.daddr, e.tuple_orig.dport) in dests
                     or e.tuple_orig.dport in ports]
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
