"""Bridge verbs: create-or-get a bridge, enslave ports, port options and port VLANs."""

from __future__ import annotations

import contextlib
import errno as E
from dataclasses import dataclass
from typing import Any

from cnipy.netlink.errors import AlreadyExists, InterfaceNotFound, NotFound, WrongKind
from cnipy.netlink.links import LinkInfo, _info
from cnipy.netlink.route import guarded, ipr, link_by_name, link_index

AF_BRIDGE = 7
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4


@dataclass(frozen=True)
class PortOptions:
    hairpin: bool
    isolated: bool


@dataclass(frozen=True)
class PortVlan:
    vid: int
    pvid: bool = False
    untagged: bool = False


def ensure_bridge(netns: str | None, name: str, *, mtu: int = 0, vlan_filtering: bool = False) -> LinkInfo:
    """Create the bridge `name`, or take the one that is there: many concurrent callers all succeed.

    A link of that name that is not a bridge is WrongKind. The bridge is left down; see `set_link_up`.
    """
    with ipr(netns) as sock:
        try:  # the common case, every ADD but a node's first: it is there (one request, not a failed add too)
            with guarded(f"get bridge {name}"):
                info = _info(link_by_name(sock, name))
        except InterfaceNotFound:
            kw: dict[str, Any] = {"ifname": name, "kind": "bridge"}
            if mtu:
                kw["mtu"] = mtu
            if vlan_filtering:
                kw["br_vlan_filtering"] = 1
            try:
                with guarded(f"create bridge {name}"):
                    sock.link("add", **kw)
            except AlreadyExists:
                pass  # made by a concurrent ADD meanwhile: take it as it is
            with guarded(f"get bridge {name}"):
                info = _info(link_by_name(sock, name))
    if info.kind != "bridge":
        raise WrongKind(f"{name!r} already exists but is not a bridge (it is {info.kind or 'a device'})",
                        E.EEXIST)
    return info


def set_master(netns: str | None, port: str, bridge: str | None, *, up: bool = False) -> None:
    """Enslave `port` to `bridge` (None: release it); with `up`, also set it up in the same request (the kernel
    applies the master first, as two separate requests would)."""
    with ipr(netns) as sock, guarded(f"set master of {port} to {bridge}"):
        master = link_index(sock, bridge) if bridge else 0
        kw: dict[str, Any] = {"state": "up"} if up else {}
        sock.link("set", index=link_index(sock, port), master=master, **kw)


def set_port_options(netns: str | None, port: str, *, hairpin: bool | None = None,
                     isolated: bool | None = None) -> None:
    kw: dict[str, int] = {}
    if hairpin is not None:
        kw["mode"] = int(hairpin)  # IFLA_BRPORT_MODE is hairpin mode
    if isolated is not None:
        kw["isolated"] = int(isolated)
    if not kw:
        return
    with ipr(netns) as sock, guarded(f"set bridge port options on {port}"):
        sock.brport("set", index=link_index(sock, port), **kw)


def port_options(netns: str | None, port: str) -> PortOptions:
    with ipr(netns) as sock, guarded(f"get bridge port options of {port}"):
        msg = link_by_name(sock, port)
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    data = linkinfo.get_attr("IFLA_INFO_SLAVE_DATA") if linkinfo is not None else None
    if data is None:
        raise NotFound(f"{port} is not a bridge port", E.ENOENT)
    return PortOptions(hairpin=bool(data.get_attr("IFLA_BRPORT_MODE")),
                       isolated=bool(data.get_attr("IFLA_BRPORT_ISOLATED")))


def add_port_vlan(netns: str | None, port: str, vid: int, *, pvid: bool = False, untagged: bool = False) -> None:
    """`bridge vlan add dev PORT vid VID [pvid] [untagged]` (NotSupported without kernel VLAN filtering)."""
    flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
    with ipr(netns) as sock, guarded(f"add vlan {vid} on {port}"):
        sock.vlan_filter("add", index=link_index(sock, port), vlan_info={"vid": vid, "flags": flags})


def del_port_vlan(netns: str | None, port: str, vid: int) -> None:
    with ipr(netns) as sock, guarded(f"delete vlan {vid} on {port}"):
        sock.vlan_filter("del", index=link_index(sock, port), vlan_info={"vid": vid})


def port_vlans(netns: str | None, port: str) -> list[PortVlan]:
    """The VLANs configured on a bridge port (empty without VLAN filtering)."""
    with ipr(netns) as sock, guarded(f"list vlans of {port}"):
        idx = link_index(sock, port)
        msgs = [m for m in sock.get_vlans() if int(m["index"]) == idx]
    out: list[PortVlan] = []
    for msg in msgs:
        spec = msg.get_attr("IFLA_AF_SPEC")
        if spec is None:
            continue
        for key, value in spec["attrs"]:
            if key == "IFLA_BRIDGE_VLAN_INFO":
                flags = int(value["flags"])
                out.append(PortVlan(int(value["vid"]), bool(flags & BRIDGE_VLAN_INFO_PVID),
                                    bool(flags & BRIDGE_VLAN_INFO_UNTAGGED)))
    return out


def remove_port_vlans(netns: str | None, port: str) -> None:
    """Drop every VLAN of a port (the default VLAN 1 included), as the reference does before tagging it."""
    for vlan in port_vlans(netns, port):
        with contextlib.suppress(NotFound):
            del_port_vlan(netns, port, vlan.vid)


def is_bridge(netns: str | None, name: str) -> bool:
    with ipr(netns) as sock, guarded(f"get {name}"):
        try:
            return _info(link_by_name(sock, name)).kind == "bridge"
        except InterfaceNotFound:
            return False


__all__ = ["AF_BRIDGE", "PortOptions", "PortVlan", "add_port_vlan", "del_port_vlan", "ensure_bridge",
           "is_bridge", "port_options", "port_vlans", "remove_port_vlans", "set_master", "set_port_options"]
