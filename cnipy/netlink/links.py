"""Link verbs: plain values in, plain data out.

`netns` is a namespace name or path, or None for the caller's own namespace.
"""

from __future__ import annotations

import errno as E
import os
import secrets
from dataclasses import dataclass
from typing import Any

from cnipy.netlink import route
from cnipy.netlink.errors import AlreadyExists, InterfaceNotFound, WrongKind
from cnipy.netlink.ns import open_netns
from cnipy.netlink.route import guarded, ipr, link_by_name, link_index

IFF_UP = 0x1
IFF_PROMISC = 0x100
MAX_NAME_TRIES = 8


@dataclass(frozen=True)
class LinkInfo:
    """What CHECK and the plugins need to know about a link."""

    name: str
    index: int
    kind: str            # "veth", "bridge", "" for a device without IFLA_INFO_KIND (lo)
    mac: str
    mtu: int
    up: bool             # administratively up (IFF_UP)
    oper_state: str      # "UP", "DOWN", "LOWERLAYERDOWN", ...
    promisc: bool
    master: int | None   # ifindex of the bridge it is enslaved to
    peer_index: int | None  # IFLA_LINK: a veth's peer ifindex (in the peer's namespace)


@dataclass(frozen=True)
class VethPair:
    host: str
    host_mac: str
    peer: str
    peer_mac: str


def _info(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    flags = int(msg["flags"])
    link = msg.get_attr("IFLA_LINK")
    return LinkInfo(
        name=msg.get_attr("IFLA_IFNAME"), index=int(msg["index"]), kind=kind or "",
        mac=msg.get_attr("IFLA_ADDRESS") or "", mtu=int(msg.get_attr("IFLA_MTU") or 0),
        up=bool(flags & IFF_UP), oper_state=msg.get_attr("IFLA_OPERSTATE") or "",
        promisc=bool(flags & IFF_PROMISC), master=msg.get_attr("IFLA_MASTER"),
        peer_index=int(link) if link is not None else None,
    )


def get_link(netns: str | None, name: str) -> LinkInfo:
    """The link called `name`; InterfaceNotFound when there is none."""
    with ipr(netns) as sock, guarded(f"get link {name}"):
        return _info(link_by_name(sock, name))


def get_link_by_index(netns: str | None, index: int) -> LinkInfo:
    with ipr(netns) as sock, guarded(f"get link #{index}"):
        return _info(sock.get_links(index)[0])


def list_links(netns: str | None) -> list[LinkInfo]:
    with ipr(netns) as sock, guarded("list links"):
        return [_info(m) for m in sock.get_links()]


def link_exists(netns: str | None, name: str) -> bool:
    with ipr(netns) as sock, guarded(f"look up {name}"):
        try:
            link_index(sock, name)
        except InterfaceNotFound:
            return False
        return True


def link_mac(netns: str | None, name: str) -> str:
    """An Ethernet link's MAC address ('aa:bb:cc:dd:ee:ff'); InterfaceNotFound when there is no such link."""
    with ipr(netns) as sock, guarded(f"get the MAC address of {name}"):
        return route.link_mac(sock, name)


def link_running(netns: str | None, name: str) -> bool:
    """Whether the link is up and operationally up (what `get_link(...).oper_state == "UP"` asks, cheaply)."""
    with ipr(netns) as sock, guarded(f"get the state of {name}"):
        return route.link_running(sock, name)


def set_link_up(netns: str | None, name: str) -> None:
    with ipr(netns) as sock, guarded(f"set {name} up"):
        sock.link("set", index=link_index(sock, name), state="up")


def set_link_down(netns: str | None, name: str) -> None:
    with ipr(netns) as sock, guarded(f"set {name} down"):
        sock.link("set", index=link_index(sock, name), state="down")


def link_is_up(netns: str | None, name: str) -> bool:
    return get_link(netns, name).up


def set_mtu(netns: str | None, name: str, mtu: int) -> None:
    with ipr(netns) as sock, guarded(f"set mtu {mtu} on {name}"):
        sock.link("set", index=link_index(sock, name), mtu=mtu)


def set_mac(netns: str | None, name: str, mac: str) -> None:
    with ipr(netns) as sock, guarded(f"set mac {mac} on {name}"):
        sock.link("set", index=link_index(sock, name), address=mac)


def set_promisc(netns: str | None, name: str, on: bool) -> None:
    with ipr(netns) as sock, guarded(f"set promisc {'on' if on else 'off'} on {name}"):
        link = link_by_name(sock, name)
        idx = int(link["index"])
        flags = int(link["flags"])
        flags = flags | IFF_PROMISC if on else flags & ~IFF_PROMISC
        sock.link("set", index=idx, flags=flags, change=IFF_PROMISC)


def delete_link(netns: str | None, name: str) -> None:
    """Delete a link (a veth takes its peer with it). InterfaceNotFound when it is not there."""
    with ipr(netns) as sock, guarded(f"delete link {name}"):
        sock.link("del", index=link_index(sock, name))


def random_veth_name() -> str:
    """A host-side name like the reference plugins': 'veth' + 8 hex digits."""
    return f"veth{secrets.token_hex(4)}"


def create_veth(netns: str | None, peer_netns: str | None, peer_name: str, *, mtu: int = 0,
                peer_mac: str = "", host_name: str = "") -> VethPair:
    """Create a veth pair in `netns` whose peer `peer_name` is moved into `peer_netns` at creation
    (None: the peer stays in `netns`).

    Both ends are left down. Without `host_name` a random 'vethXXXXXXXX' name is chosen (and re-chosen if it is
    taken). AlreadyExists when `peer_name` is taken in `peer_netns`.
    """
    if link_exists(peer_netns if peer_netns else netns, peer_name):
        raise AlreadyExists(f"container veth name {peer_name!r} already exists", E.EEXIST)
    peer_fd = open_netns(peer_netns) if peer_netns else -1
    try:
        with ipr(netns) as sock:
            for _ in range(MAX_NAME_TRIES):
                name = host_name or random_veth_name()
                peer: dict[str, Any] = {"ifname": peer_name}
                if peer_fd >= 0:
                    peer["net_ns_fd"] = peer_fd
                kw: dict[str, Any] = {}
                if mtu:
                    peer["mtu"] = mtu
                    kw["mtu"] = mtu
                if peer_mac:
                    peer["address"] = peer_mac
                try:
                    with guarded(f"create veth {name} with peer {peer_name}"):
                        sock.link("add", ifname=name, kind="veth", peer=peer, **kw)
                except AlreadyExists:
                    if host_name or link_exists(peer_netns if peer_netns else netns, peer_name):
                        raise
                    continue  # the random host name collided: pick another
                host_mac = route.link_mac(sock, name)
                break
            else:
                raise AlreadyExists("could not find a free veth name", E.EEXIST)
    finally:
        if peer_fd >= 0:
            os.close(peer_fd)
    return VethPair(name, host_mac, peer_name, link_mac(peer_netns if peer_netns else netns, peer_name))


def veth_peer(netns: str | None, name: str) -> int:
    """The ifindex of a veth's peer (in the peer's namespace)."""
    info = get_link(netns, name)
    if info.kind != "veth" or info.peer_index is None:
        raise WrongKind(f"{name} is not a veth")
    return info.peer_index
