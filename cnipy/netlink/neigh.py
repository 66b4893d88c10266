"""Permanent neighbour (ARP/NDP) entries on one device: the overlay's peer VTEP addresses."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from cnipy.netlink.errors import NotFound
from cnipy.netlink.route import guarded, ipr, link_index

NUD_PERMANENT = 0x80


@dataclass(frozen=True, order=True)
class Neighbour:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    mac: str


def list_permanent(netns: str | None, dev: str) -> list[Neighbour]:
    with ipr(netns) as sock, guarded(f"list neighbours on {dev}"):
        found = sock.link_lookup(ifname=dev)
        if not found:
            return []
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in sock.get_neighbours(family=family, ifindex=found[0]):
                if msg["state"] & NUD_PERMANENT and msg.get_attr("NDA_LLADDR"):
                    out.append(Neighbour(ipaddress.ip_address(msg.get_attr("NDA_DST")),
                                         str(msg.get_attr("NDA_LLADDR")).lower()))
        return sorted(out)


def replace(netns: str | None, dev: str, entry: Neighbour) -> None:
    with ipr(netns) as sock, guarded(f"neighbour {entry.ip} on {dev}"):
        sock.neigh("replace", ifindex=link_index(sock, dev), dst=str(entry.ip), lladdr=entry.mac,
                   state=NUD_PERMANENT)


def delete(netns: str | None, dev: str, entry: Neighbour) -> None:
    """Remove an entry; one already gone is fine."""
    with ipr(netns) as sock, contextlib.suppress(NotFound), guarded(f"delete neighbour {entry.ip} on {dev}"):
        found = sock.link_lookup(ifname=dev)
        if found:
            sock.neigh("del", ifindex=found[0], dst=str(entry.ip), lladdr=entry.mac)
