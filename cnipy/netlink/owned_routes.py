"""Routes owned by one program, told apart by their route protocol number (like a prefixed chain): list them,
replace one, delete one. Routes of any other protocol are never touched."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from cnipy.netlink.errors import NotFound
from cnipy.netlink.route import guarded, ipr, link_index

RTNH_F_ONLINK = 4
MAIN_TABLE = 254


@dataclass(frozen=True, order=True)
class OwnedRoute:
    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    dev: str
    onlink: bool = False


def list_owned(netns: str | None, proto: int) -> list[OwnedRoute]:
    with ipr(netns) as sock, guarded("list routes"):
        names = {link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in sock.get_links()}
        out = []
        for r in sock.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            if r["proto"] != proto or not r.get_attr("RTA_GATEWAY"):
                continue
            dst = ipaddress.IPv4Network(f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}")
            out.append(OwnedRoute(dst, ipaddress.IPv4Address(r.get_attr("RTA_GATEWAY")),
                                  names.get(r.get_attr("RTA_OIF"), ""), bool(r["flags"] & RTNH_F_ONLINK)))
        return sorted(out)


def replace(netns: str | None, proto: int, route: OwnedRoute) -> None:
    with ipr(netns) as sock, guarded(f"route {route.dst} via {route.gateway}"):
        sock.route("replace", dst=str(route.dst), gateway=str(route.gateway), oif=link_index(sock, route.dev),
                   proto=proto, flags=RTNH_F_ONLINK if route.onlink else 0, table=MAIN_TABLE)


def delete(netns: str | None, proto: int, route: OwnedRoute) -> None:
    """Remove our route to `route.dst`; one already gone is fine."""
    with ipr(netns) as sock, contextlib.suppress(NotFound), guarded(f"delete route {route.dst}"):
        sock.route("del", dst=str(route.dst), proto=proto, table=MAIN_TABLE)
