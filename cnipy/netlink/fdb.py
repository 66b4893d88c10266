"""Forwarding-database entries on a VXLAN device: which underlay address a VTEP MAC lives behind."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from cnipy.netlink.errors import NotFound
from cnipy.netlink.route import guarded, ipr, link_index

NUD_PERMANENT = 0x80
NTF_SELF = 0x02


@dataclass(frozen=True, order=True)
class FdbEntry:
    mac: str
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address


def list_remote(netns: str | None, dev: str) -> list[FdbEntry]:
    """Entries with a remote destination (the ones the overlay programs) on `dev`."""
    with ipr(netns) as sock, guarded(f"list fdb on {dev}"):
        found = sock.link_lookup(ifname=dev)
        if not found:
            return []
        out = []
        for msg in sock.get_neighbours(family=socket.AF_BRIDGE, ifindex=found[0]):
            dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if msg["ifindex"] == found[0] and dst and mac:
                out.append(FdbEntry(str(mac).lower(), ipaddress.ip_address(dst)))
        return sorted(out)


def replace(netns: str | None, dev: str, entry: FdbEntry) -> None:
    with ipr(netns) as sock, guarded(f"fdb {entry.mac} on {dev}"):
        sock.fdb("replace", ifindex=link_index(sock, dev), lladdr=entry.mac, dst=str(entry.dst),
                 state=NUD_PERMANENT, flags=NTF_SELF)


def delete(netns: str | None, dev: str, entry: FdbEntry) -> None:
    """Remove an entry; one already gone is fine."""
    with ipr(netns) as sock, contextlib.suppress(NotFound), guarded(f"delete fdb {entry.mac} on {dev}"):
        found = sock.link_lookup(ifname=dev)
        if found:
            sock.fdb("del", ifindex=found[0], lladdr=entry.mac, dst=str(entry.dst), flags=NTF_SELF)
